"""The C accelerator governor.metering._fastsample against the pure-Python sampler.

``to_sample`` (the mapping of a group's raw values onto its GroupSample) and
``sample_groups`` (the fast tier's per-group loop, reading through the reader's
``fast_read`` and ``entries``) against sampler.to_sample_at and the Python loop, on the
same values and the same fake trees (real kernel output): every sample, gone group and
error must be the same.  Skipped, saying so, when the extension is not built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.parse import Psi, PsiLine
from governor.cgroupfs.reader import ACCELERATED, GroupStats
from governor.metering.sampler import Sampler
from governor.metering.tosample import C_TO_SAMPLE, to_sample_at
from tests.unit.cgroupfs_fake import LEAF_FILES, create_child

pytestmark = pytest.mark.skipif(
    C_TO_SAMPLE is None or not ACCELERATED,
    reason="governor.metering._fastsample or governor.cgroupfs._fastread not in use (not "
    "built: pip install -e .; or GOVERNOR_PURE_PYTHON=1)")

SOME = "some avg10=0.00 avg60=0.00 avg300=0.00 total=1523\n"


def outcome(fn: Callable[[], Any]) -> Any:
    try:
        return ("ok", fn())
    except Exception as e:  # the same type and message from both paths
        return ("error", type(e), str(e))


@pytest.fixture
def fs(tmp_path: Path) -> CgroupFS:
    return CgroupFS(tmp_path, verify=False)


def stats(**kw: Any) -> GroupStats:
    base = {
        "cgroup_id": 4242, "cpu": {"usage_usec": 5, "user_usec": 3, "system_usec": 2},
        "memory_current": 1, "memory_peak": None, "swap_current": 0,
        "memory_events": {"low": 0, "oom_kill": 2}, "memory_stat": {"anon": 7, "file": 8},
        "io": {"8:0": {"rbytes": 1, "wbytes": 2, "rios": 3, "wios": 4, "dbytes": 5, "dios": 6}},
        "pids_current": 3,
        "psi": {"cpu": Psi(PsiLine(0.1, 0.2, 0.3, 11), PsiLine(0.0, 0.0, 0.0, 12)),
             "io": Psi(PsiLine(0.1, 0.2, 0.3, 13), None)}}
    base.update(kw)
    return GroupStats(**base)  # type: ignore[arg-type]


STARTED = datetime(2026, 11, 28, 10, 0, 0, 123456, tzinfo=UTC)
SAMPLE_CASES = [
    ("plain", stats(), "acme/web", STARTED, None),
    ("tenant", stats(), "acme", STARTED, None),
    ("trailing slash", stats(), "acme/", STARTED, None),
    ("deep", stats(), "acme/web/x", STARTED, None),
    ("all missing", GroupStats(cgroup_id=1), "a/b", STARTED, None),
    ("empty dicts", stats(cpu={}, memory_events={}, memory_stat={}, io={}, psi={}), "a/b",
     STARTED, None),
    ("io odd", stats(io={"8:0": {"rbytes": True}, "8:16": {}}), "a/b", STARTED, None),
    ("io mapping", stats(io={"8:0": MappingProxyType({"rbytes": 1})}), "a/b", STARTED, None),
    ("cpu mapping", stats(cpu=MappingProxyType({"usage_usec": 1})), "a/b", STARTED, None),
    ("unknown psi", stats(psi={"irq": Psi(PsiLine(0, 0, 0, 1), None)}), "a/b", STARTED,
     None),
    ("created", stats(), "a/b", STARTED, STARTED - timedelta(days=3)),
    ("created other tz", stats(), "a/b", STARTED,
     datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=2)))),
    ("created naive", stats(), "a/b", STARTED, datetime(2026, 1, 1)),
    ("created named zero offset", stats(), "a/b", STARTED,
     datetime(2026, 1, 1, tzinfo=timezone(timedelta(0), "Z"))),
    ("created naive, start other tz", stats(), "a/b",
     STARTED.astimezone(timezone(timedelta(hours=-5))), datetime(2026, 1, 1)),
    ("naive start", stats(), "a/b", datetime(2026, 1, 1), None),
    ("other tz start", stats(), "a/b", STARTED.astimezone(timezone(timedelta(hours=-5))),
     None),
]


@pytest.mark.parametrize(("st", "path", "started", "created"),
                         [c[1:] for c in SAMPLE_CASES], ids=[c[0] for c in SAMPLE_CASES])
@pytest.mark.parametrize(("t0", "mono"), [
    (100.0, 100.0), (100.0, 100.0000005), (100.0, 100.0000015), (1e5, 1e5 + 0.25),
    (12.345678, 13.5), (50.0, 49.9999995), (3.0, 3.0 + 2 * 86400 + 0.1234565),
])
def test_to_sample_c_equals_python(st: GroupStats, path: str, started: datetime,
                                   created: datetime | None, t0: float, mono: float) -> None:
    assert C_TO_SAMPLE is not None
    py = outcome(lambda: to_sample_at(st, "node-1", path, started, t0, mono, created))
    c = outcome(lambda: C_TO_SAMPLE(st, "node-1", path, started, t0, mono, created))
    assert py == c
    if py[0] == "ok":
        assert py[1].wall == c[1].wall and py[1].monotonic is c[1].monotonic


@pytest.mark.parametrize("seed", range(3))
def test_to_sample_wall_rounding_matches_timedelta(seed: int) -> None:
    import random
    assert C_TO_SAMPLE is not None
    rng = random.Random(seed)
    st = stats()
    for _ in range(2000):
        t0 = rng.uniform(0, 1e6)
        mono = t0 + rng.choice([rng.uniform(0, 10), rng.randrange(0, 10**7) / 2e6])
        assert C_TO_SAMPLE(st, "n", "a/b", STARTED, t0, mono, None).wall == \
            to_sample_at(st, "n", "a/b", STARTED, t0, mono, None).wall


def test_sampler_passes_are_the_same(fs: CgroupFS, tmp_path: Path) -> None:
    sub = create_child(tmp_path, "governor.slice")
    for t in ("acme", "beta"):
        tdir = create_child(sub, t)
        for g in ("web", "db"):
            create_child(tdir, g)
    (sub / "beta" / "db" / "memory.events").unlink()
    (sub / "beta" / "web" / "io.stat").write_text("")
    (sub / "acme" / "db" / "cpu.pressure").write_text(SOME)
    passes = []
    for accelerated in (False, True):
        s = Sampler(fs, "governor.slice", "node-1", slow_every=2, accelerated=accelerated)
        s.note_created("acme/web", STARTED)
        passes.append([s.sample() for _ in range(3)])
        s.close()
    for a, b in zip(*passes, strict=True):
        assert a.gone == b.gone and a.errors == b.errors and a.slow == b.slow

        def strip(x: Any) -> Any:
            return dataclasses.replace(x, wall=STARTED, monotonic=0.0)
        assert [strip(x) for x in a.samples] == [strip(x) for x in b.samples]
        assert {x.path: x.created for x in b.samples}["acme/web"] == STARTED


def test_sampler_fast_tier_scenario_is_the_same(tmp_path: Path) -> None:
    """Fast-tier passes (the C loop, sample_groups) through births, a new incarnation,
    a vanished group, absent files and changing counters, against the Python loop."""
    import shutil

    def run(accelerated: bool, base: Path) -> list[Any]:
        base.mkdir()
        sub = create_child(base, "governor.slice")
        t = create_child(sub, "acme")
        for g in ("a", "b", "c"):
            create_child(t, g)
        (t / "b" / "memory.peak").unlink()
        s = Sampler(CgroupFS(base, verify=False), "governor.slice", "n", slow_every=1000,
                    accelerated=accelerated)
        s.note_created("acme/a", STARTED)
        out = []
        ids: dict[int, int] = {}  # inode numbers differ between the trees: first seen, 0...

        def take() -> None:
            p = s.sample()
            out.append((p.gone, p.errors, p.slow,
                        [dataclasses.replace(x, wall=STARTED, monotonic=0.0,
                                             cgroup_id=ids.setdefault(x.cgroup_id, len(ids)),
                                             # a birth's time is when expect_birth ran
                                             created=x.created and STARTED)
                         for x in p.samples],
                        [x.path for x in p.samples if x.created is not None],
                        {k: v[0] == s.latest[k].cgroup_id for k, v in s.created.items()
                         if k in s.latest},
                        sorted(s.latest), sorted(s._births)))

        take()                                   # slow tier: opens everything
        take()                                   # fast tier
        (t / "a" / "cpu.stat").write_text(LEAF_FILES["cpu.stat"].replace("52083", "60000"))
        s.expect_birth("acme/d")
        create_child(t, "d")
        take()                                   # a birth: the new group is born now
        shutil.rmtree(t / "c")                   # re-created: a new incarnation
        create_child(t, "c")
        s.reader.forget("governor.slice/acme/c")  # (the kernel's ENODEV, on the fake)
        take()
        shutil.rmtree(t / "b")
        take()                                   # gone
        take()
        s.close()
        return out

    assert run(False, tmp_path / "py") == run(True, tmp_path / "c")


def test_sampler_fast_pass_in_chunks_is_the_same(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """More groups than FAST_CHUNK, one of them left to the Python loop mid-way (a birth):
    the C pass runs in chunks of FAST_CHUNK (the GIL can change hands between them) and the
    samples are those of the Python loop."""
    from governor.metering import sampler as sampler_mod

    def run(accelerated: bool, base: Path) -> tuple[list[Any], list[tuple[int, int]]]:
        base.mkdir()
        sub = create_child(base, "governor.slice")
        t = create_child(sub, "acme")
        n = sampler_mod.FAST_CHUNK * 3 + 5
        for g in range(n):
            create_child(t, f"g{g:03d}")
        s = Sampler(CgroupFS(base, verify=False), "governor.slice", "n", slow_every=1000,
                    accelerated=accelerated)
        calls: list[tuple[int, int]] = []
        if s._fast_pass is not None:
            real = s._fast_pass

            def spy(*a: Any) -> int:
                j: int = real(*a)
                calls.append((a[1], j))
                return j
            s._fast_pass = spy
        s.sample()                         # slow tier: opens everything
        s.expect_birth("acme/g020x")
        create_child(t, "g020x")           # sorts after g020: the Python loop takes it
        p = s.sample()
        s.close()
        return ([dataclasses.replace(x, wall=STARTED, monotonic=0.0, cgroup_id=0,
                                     created=x.created and STARTED) for x in p.samples],
                calls)

    py, _ = run(False, tmp_path / "py")
    c, calls = run(True, tmp_path / "c")
    assert c == py and len(c) == sampler_mod.FAST_CHUNK * 3 + 5 + 1 + 1  # + the tenant
    assert calls and all(j - i <= sampler_mod.FAST_CHUNK for i, j in calls)
    assert len(calls) >= 4  # the pass was cut in chunks


def test_sampler_past_the_fd_budget_is_the_same(tmp_path: Path) -> None:
    """Groups past the reader's fd budget have no fast descriptors (fast is None): the C
    pass leaves them to the Python loop.  It used to return NULL without an exception there
    (SystemError: the whole pass lost), found by bench/gil_wait.py at 10,000 groups."""
    def run(accelerated: bool, base: Path) -> list[Any]:
        base.mkdir()
        t = create_child(create_child(base, "governor.slice"), "acme")
        for g in range(12):
            create_child(t, f"g{g:02d}")
        s = Sampler(CgroupFS(base, verify=False), "governor.slice", "n", slow_every=1000,
                    accelerated=accelerated)
        s.reader.max_fds = 40  # a few groups' worth: the rest reopen their files each time
        out = []
        for _ in range(3):
            p = s.sample()
            out.append((p.gone, p.errors, [dataclasses.replace(
                x, wall=STARTED, monotonic=0.0, cgroup_id=0,
                created=x.created and STARTED) for x in p.samples]))
        assert any(g.fast is None for g in s.reader._groups.values())
        s.close()
        return out

    py = run(False, tmp_path / "py")
    assert py == run(True, tmp_path / "c") and len(py[-1][2]) == 13 and not py[-1][1]


def test_item17_c_pass_raises_an_error_it_cannot_hand_back(tmp_path: Path) -> None:
    """An exception in the C pass that is no read or parse error (here raised once by a
    file's parser: a MemoryError, an interrupt, a bug) ends the pass with it; it was
    cleared, and the group read again as if nothing happened."""
    from governor.cgroupfs import _fastread, reader

    class Boom(Exception):
        pass

    calls = []
    real = reader._FAST_SPEC[0][2]

    def once(data: bytes) -> object:
        calls.append(data)
        if len(calls) == 1:
            raise Boom("injected")
        return real(data)

    sub = create_child(tmp_path, "governor.slice")
    create_child(create_child(sub, "acme"), "web")
    # not the exact layout (two spaces): the C reader calls the file's Python parser
    (sub / "acme" / "web" / "cpu.stat").write_text("usage_usec  5\n")
    s = Sampler(CgroupFS(tmp_path, verify=False), "governor.slice", "n", slow_every=1000,
                accelerated=True)
    s.sample()  # slow tier, Python: opens the files
    _fastread.configure_reader(
        stats_type=GroupStats, stats_fields=tuple(GroupStats.__dataclass_fields__),
        files=((0, "cpu", once), *reader._FAST_SPEC[1:]), psi_type=Psi, psiline_type=PsiLine)
    try:
        with pytest.raises(Boom, match="injected"):
            s.sample()  # fast tier: the C pass
        assert calls
        assert [x.cpu_usage_usec for x in s.sample().samples] == [52083, 5]
    finally:
        reader._accelerated()  # the real configuration back
        s.close()


def test_to_sample_leaves_storage_for_the_pass_to_set() -> None:
    """Issue #19: ``storage_bytes`` is not a cgroup file; both readers make it None, and
    the pass sets it afterwards through the slot's member descriptor (the frozen
    dataclass refuses attribute assignment)."""
    from governor.metering.sample import GroupSample

    assert C_TO_SAMPLE is not None
    for make in (C_TO_SAMPLE, to_sample_at):
        s = make(stats(), "n", "acme/web", STARTED, 1.0, 1.5, None)
        assert s.storage_bytes is None
        with pytest.raises(dataclasses.FrozenInstanceError):
            s.storage_bytes = 1  # type: ignore[misc]
        GroupSample.storage_bytes.__set__(s, 3 << 40)  # type: ignore[attr-defined]
        assert s.storage_bytes == 3 << 40
        assert s == dataclasses.replace(make(stats(), "n", "acme/web", STARTED, 1.0, 1.5,
                                             None), storage_bytes=3 << 40)


def test_a_group_the_c_pass_cannot_read_is_left_to_the_python_loop(tmp_path: Path) -> None:
    """The deliberate fallback of sample_groups: a read or parse error (OSError,
    ValueError) is cleared there and the group handed back to the Python loop, which reads
    it again file by file and reports it with its file (StatFileError) while the other
    groups are sampled: the same samples and errors as the pure-Python pass."""
    def run(accelerated: bool, base: Path) -> list[Any]:
        base.mkdir()
        t = create_child(create_child(base, "governor.slice"), "acme")
        for g in ("a", "b", "c"):
            create_child(t, g)
        s = Sampler(CgroupFS(base, verify=False), "governor.slice", "n", slow_every=1000,
                    accelerated=accelerated)
        s.sample()  # slow tier: opens everything
        (t / "b" / "cpu.stat").write_text("usage_usec x\n")  # no parser takes it
        out = []
        for _ in range(2):
            p = s.sample()
            out.append((p.gone, [e.replace(str(base), "BASE") for e in p.errors],
                        [x.path for x in p.samples]))
        assert dict(s.error_counts)["parse"] == 2
        s.close()
        return out

    py = run(False, tmp_path / "py")
    assert run(True, tmp_path / "c") == py
    assert py[0][2] == ["acme", "acme/a", "acme/c"]
    assert len(py[0][1]) == 1 and "cpu.stat" in py[0][1][0]


def test_the_sampler_reads_through_the_readers_public_face(tmp_path: Path) -> None:
    """sample_groups gets the reader's ``entries`` and ``fast_read``: the same objects the
    reader uses (a live mapping and the C read), no private attribute."""
    calls: list[tuple[Any, ...]] = []
    t = create_child(create_child(tmp_path, "governor.slice"), "acme")
    create_child(t, "a")
    s = Sampler(CgroupFS(tmp_path, verify=False), "governor.slice", "n", slow_every=1000,
                accelerated=True)
    real = s._fast_pass
    assert real is not None

    def spy(*a: Any) -> int:
        calls.append(a)
        j: int = real(*a)
        return j
    s._fast_pass = spy
    s.sample()
    s.sample()
    assert calls
    assert calls[-1][2] is s.reader.entries and calls[-1][3] is s.reader.fast_read
    assert s.reader.fast_read is not None and "governor.slice/acme/a" in s.reader.entries
    s.close()
