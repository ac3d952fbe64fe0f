"""The C accelerator (governor.cgroupfs._fastread) against the pure-Python path.

Both read the same fake tree (real kernel output, then odd and broken text) and map the
same raw values onto samples; every value, None and error must be the same.  Skipped,
saying so, when the extension is not built.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.parse import Psi, PsiLine
from governor.cgroupfs.reader import ACCELERATED, FAST_FILES, GroupStats, StatReader
from governor.metering.sampler import C_TO_SAMPLE, Sampler, to_sample_at
from tests.unit.cgroupfs_fake import LEAF_FILES, create_child

pytestmark = pytest.mark.skipif(
    not ACCELERATED, reason="governor.cgroupfs._fastread not in use (not built: pip install -e .; "
        "or GOVERNOR_PURE_PYTHON=1)")

PSI = LEAF_FILES["cpu.pressure"]
SOME = "some avg10=0.00 avg60=0.00 avg300=0.00 total=1523\n"

#: (file, text): real layouts first, then odd ones (parsed by the Python parsers from the
#: C path too, so they must agree) and broken ones (the same error from both)
CASES = [
    ("cpu.stat", LEAF_FILES["cpu.stat"]),
    ("cpu.stat", "usage_usec 18446744073709551615\nuser_usec 99999999999999999999\n"),
    ("cpu.stat", "usage_usec 7\n" * 3),                       # duplicate key: last wins
    ("cpu.stat", "usage_usec 007\nsystem_usec 0\n"),
    ("cpu.stat", ""),                                          # empty: {}
    ("cpu.stat", "usage_usec 5"),                              # truncated: no newline
    ("cpu.stat", "usage_usec  5\n\n"),                         # odd spacing, blank line
    ("cpu.stat", "usage_usec 5\r\nuser_usec 6\n"),
    ("cpu.stat", "usage_usec -5\n"),
    ("cpu.stat", "usage_usec 5 6\n"),                          # broken
    ("cpu.stat", "usage_usec x\n"),                            # broken
    ("cpu.stat", "usagé_usec 5\n"),                            # non-ASCII key
    ("memory.current", "270336\n"),
    ("memory.current", "0\n"),
    ("memory.current", "123456789012345678901234567890\n"),
    ("memory.current", "270336"),                              # no newline
    ("memory.current", " 270336 \n"),
    ("memory.current", "1_000\n"),
    ("memory.current", "+5\n"),
    ("memory.current", "max\n"),                               # broken for a counter
    ("memory.current", ""),                                    # broken
    ("memory.peak", "4096\n\n"),
    ("memory.events", LEAF_FILES["memory.events"]),
    ("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"),  # older kernel
    ("io.stat", LEAF_FILES["io.stat"]),
    ("io.stat", ""),
    ("io.stat", LEAF_FILES["io.stat"] + "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=5 dios=6\n"),
    ("io.stat", "254:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=5 dios=6 cost.vrate=100.00\n"),
    ("io.stat", "254:0 rbytes=1 wbytes=2 rios=3 wios=4\n"),    # older kernel: no discards
    ("io.stat", "254:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=5 dios=6"),  # truncated
    ("io.stat", "254:0 rbytes=max\n"),                         # broken
    ("io.stat", "254:0 rbytes\n"),                             # broken
    ("pids.current", "1\n"),
    ("cpu.pressure", PSI),
    ("cpu.pressure", SOME),                                    # no full line (before 5.13)
    ("cpu.pressure", SOME.replace("0.00", "12.34", 1).replace("1523", "99999999999999999999")),
    ("cpu.pressure", PSI.replace("avg10=0.00", "avg10=1e3")),
    ("cpu.pressure", PSI + "\n"),
    ("cpu.pressure", "full avg10=0.00 avg60=0.00 avg300=0.00 total=1\n" + SOME),
    ("cpu.pressure", SOME[:-1]),                               # truncated
    ("cpu.pressure", "full avg10=0.00 avg60=0.00 avg300=0.00 total=1\n"),  # broken: no some
    ("cpu.pressure", "some avg10=0.00 total=5\n"),             # broken
    ("io.pressure", PSI.replace("total=1320", "total=x")),     # broken
]


def outcome(fn: Callable[[], Any]) -> Any:
    try:
        return ("ok", fn())
    except Exception as e:  # the same type and message from both paths
        return ("error", type(e), str(e))


def read_both(fs: CgroupFS, rel: str, *, slow: bool = False) -> tuple[Any, Any]:
    """The first and second (fast path) reads by each path, as outcomes."""
    out = []
    for accelerated in (False, True):
        with StatReader(fs, accelerated=accelerated) as r:
            out.append((outcome(lambda r=r: r.read(rel, slow=slow)),
                        outcome(lambda r=r: r.read(rel, slow=slow))))
    return out[0], out[1]


@pytest.fixture
def fs(tmp_path: Path) -> CgroupFS:
    return CgroupFS(tmp_path, verify=False)


def test_real_kernel_output_reads_the_same(fs: CgroupFS, tmp_path: Path) -> None:
    create_child(tmp_path, "g")
    py, c = read_both(fs, "g", slow=True)
    assert py == c
    assert py[1][0] == "ok" and py[1][1].cpu["usage_usec"] == 52083


@pytest.mark.parametrize(("name", "text"), CASES)
def test_odd_and_broken_text_reads_the_same(fs: CgroupFS, tmp_path: Path, name: str,
                                            text: str) -> None:
    g = create_child(tmp_path, "g")
    (g / name).write_text(text)
    py, c = read_both(fs, "g")
    assert py == c


@pytest.mark.parametrize("missing", FAST_FILES)
def test_missing_files_are_none_on_both(fs: CgroupFS, tmp_path: Path, missing: str) -> None:
    g = create_child(tmp_path, "g")
    (g / missing).unlink()
    py, c = read_both(fs, "g")
    assert py == c
    st = c[1][1]
    assert isinstance(st, GroupStats)
    assert st.psi.get(missing.removesuffix(".pressure")) is None if "pressure" in missing \
        else None in (st.cpu, st.memory_current, st.memory_peak, st.swap_current,
                      st.memory_events, st.io, st.pids_current)


def test_changing_pressure_and_counters_are_reparsed(fs: CgroupFS, tmp_path: Path) -> None:
    g = create_child(tmp_path, "g")
    with StatReader(fs, accelerated=False) as py, StatReader(fs, accelerated=True) as c:
        for total in (1523, 1777, 1777, 2000):
            (g / "cpu.pressure").write_text(PSI.replace("total=1523", f"total={total}"))
            (g / "cpu.stat").write_text(LEAF_FILES["cpu.stat"].replace("52083", str(total)))
            a, b = py.read("g"), c.read("g")
            assert a == b and b.psi["cpu"].some.total == total == b.cpu["usage_usec"]
            assert isinstance(b.psi["cpu"].some, PsiLine) and isinstance(b.psi["cpu"], Psi)


def test_results_are_fresh_objects(fs: CgroupFS, tmp_path: Path) -> None:
    create_child(tmp_path, "g")
    with StatReader(fs, accelerated=True) as r:
        a, b = r.read("g"), r.read("g")
        assert a == b and a.cpu is not b.cpu and a.io is not b.io
        assert a.io is not None and b.io is not None
        assert a.io["254:0"] is not b.io["254:0"]


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


def test_subdirs_lists_what_scandir_lists(tmp_path: Path) -> None:

    from governor.cgroupfs import _fastread
    from governor.cgroupfs.files import scandir_subdirs

    d = tmp_path / "g"
    d.mkdir()
    for name in ("b", "a", "c.d", "z" * 200):
        (d / name).mkdir()
    for name, text in LEAF_FILES.items():
        (d / name).write_text(text)
    (d / "link").symlink_to(d / "a")                  # a symlink to a dir is not listed
    os.mkdir(os.fsencode(d) + b"/caf\xe9")             # not UTF-8: surrogateescape, as scandir
    for i in range(300):                              # more than one getdents64 buffer
        (d / f"n{i:03d}").mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (d, empty):
        fds = [os.open(path, os.O_RDONLY | os.O_DIRECTORY) for _ in range(2)]
        try:
            assert _fastread.subdirs(fds[0]) == scandir_subdirs(fds[1])
        finally:
            for fd in fds:
                os.close(fd)
    fd = os.open(d / "a", os.O_PATH)
    try:
        with pytest.raises(OSError):                  # as scandir: an error, not a list
            _fastread.subdirs(fd)
        with pytest.raises(OSError):
            scandir_subdirs(fd)
    finally:
        os.close(fd)


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
