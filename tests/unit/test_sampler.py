from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from governor.cgroupfs.files import CgroupFS
from governor.metering.sampler import Sampler
from tests.unit.cgroupfs_fake import LEAF_FILES, READ_PATHS, create_child


@pytest.fixture(autouse=True)
def _close_samplers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Close every Sampler (its cached descriptors, inotify) and its CgroupFS a test made:
    left open, this file's ~1,000 descriptors pushed later tests past select()'s 1024."""
    made: list[Sampler] = []
    init = Sampler.__init__

    def track(self: Sampler, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Sampler, "__init__", track)
    yield
    for s in made:
        s.close()
        s.fs.close()


def tree(tmp_path: Path) -> Path:
    root = tmp_path / "cg"
    root.mkdir()
    sub = create_child(root, "governor.slice")
    t = create_child(sub, "acme")
    create_child(t, "web")
    g = create_child(t, "db")
    (g / "memory.stat").unlink()  # e.g. memory not enabled there: missing, not zero
    (g / "memory.events").unlink()
    return root


def test_sampler_maps_raw_values_and_tiers(tmp_path: Path) -> None:
    root = tree(tmp_path)
    s = Sampler(CgroupFS(root, verify=False), "governor.slice", "node-1", slow_every=3)
    p1 = s.sample()
    assert p1.slow and [x.path for x in p1.samples] == ["acme", "acme/db", "acme/web"]
    web = {x.path: x for x in p1.samples}["acme/web"]
    assert web.tenant == "acme" and web.group == "web" and web.node == "node-1"
    assert web.cpu_usage_usec == 52083 and web.cpu_system_usec == 20833
    assert web.memory_current == 270336 and web.memory_peak == 1662976
    assert web.memory_events_oom_kill == 0 and web.memory_stat_anon == 126976
    assert web.io["254:0"]["wbytes"] == 67108864 and web.pids_current == 1
    assert web.psi["cpu_some"] == 1523 and web.psi["io_full"] == 24
    db = {x.path: x for x in p1.samples}["acme/db"]
    assert db.memory_events_oom_kill is None and db.memory_stat_anon is None
    tenant = {x.path: x for x in p1.samples}["acme"]
    assert tenant.group is None
    assert len({x.wall for x in p1.samples}) == 3  # stamped per read
    # later passes read memory.stat of a group on its slot's passes only, one in
    # slow_every (3): the others leave it None (not read: missing, not zero)
    for _ in range(2):
        seen = []
        for _ in range(3):
            due = s.reads_slow_tier("acme/web")
            p = s.sample()
            assert not p.slow
            seen.append(({x.path: x for x in p.samples}["acme/web"].memory_stat_anon, due))
        assert sorted(seen, key=lambda x: x[1]) == [(None, False), (None, False),
                                                   (126976, True)]


def test_sampler_reports_gone_groups(tmp_path: Path) -> None:
    import shutil

    root = tree(tmp_path)
    s = Sampler(CgroupFS(root, verify=False), "governor.slice", "n")
    s.sample()
    shutil.rmtree(root / "governor.slice/acme/db")
    p = s.sample()
    assert p.gone == ["acme/db"] and "acme/db" not in {x.path for x in p.samples}


def test_created_known_only_for_same_incarnation(tmp_path: Path) -> None:
    root = tree(tmp_path)
    s = Sampler(CgroupFS(root, verify=False), "governor.slice", "n")
    s.note_created("acme/web")
    s.created["acme/db"] = (12345, s.created["acme/web"][1])  # another incarnation's id
    got = {x.path: x for x in s.sample().samples}
    assert got["acme/web"].created is not None and got["acme/db"].created is None


def test_fast_sample_constructor_equals_the_dataclass_init(tmp_path: Path) -> None:
    import dataclasses

    from governor.metering.sample import GroupSample
    from governor.metering.tosample import _SAMPLE_FIELDS, _make_sample

    root = tree(tmp_path)
    s = Sampler(CgroupFS(root, verify=False), "governor.slice", "n")
    for x in s.sample().samples:
        values = [getattr(x, name) for name in _SAMPLE_FIELDS]
        again = GroupSample(**dict(zip(_SAMPLE_FIELDS, values, strict=True)))
        assert _make_sample(values) == again and dataclasses.astuple(again) == tuple(values)
        with pytest.raises(dataclasses.FrozenInstanceError):
            x.node = "other"  # type: ignore[misc]
    # the pass sets them last (storage_bytes: issue #19; values: issue #17's controllers)
    assert _SAMPLE_FIELDS[-2:] == ("storage_bytes", "values")
    assert all(x.storage_bytes is None for x in s.sample().samples)
    assert all(x.values is None for x in s.sample().samples)
    bad = [getattr(x, name) for name in _SAMPLE_FIELDS]
    bad[_SAMPLE_FIELDS.index("psi")] = {"nope": 1}
    with pytest.raises(ValueError, match="unknown PSI key 'nope'"):
        _make_sample(bad)  # __post_init__ still checks
    from datetime import datetime, timedelta, timezone

    for field, value in (("wall", datetime(2026, 1, 1)),
                         ("created", datetime(2026, 1, 1)),
                         ("wall", datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=2))))):
        odd = [getattr(x, name) for name in _SAMPLE_FIELDS]
        odd[_SAMPLE_FIELDS.index(field)] = value
        if value.tzinfo is None:
            with pytest.raises(ValueError, match=f"GroupSample.{field} must be timezone-aware"):
                _make_sample(odd)
        else:   # aware, another zone: an instant all the same, accepted
            assert getattr(_make_sample(odd), field) == value


def test_birth_reaches_a_group_row_made_first_by_another_writer(tmp_path: Path) -> None:
    """The OOM watcher may create an incarnation's row before the sampler stores its first
    sample; the birth the sampler knows must still reach the row (metering needs it)."""
    from sqlalchemy import select

    from governor.store.db import make_engine, scope_factory, upgrade
    from governor.store.models import Group
    from governor.store.service import ensure_node, incarnation_ids, record_samples

    root = tree(tmp_path)
    s = Sampler(CgroupFS(root, verify=False), "governor.slice", "n")
    s.expect_birth("acme/web")
    samples = s.sample().samples
    web = next(x for x in samples if x.path == "acme/web")
    assert web.created is not None
    url = f"sqlite:///{tmp_path}/g.db"
    upgrade(url)
    scope = scope_factory(make_engine(url))
    with scope() as session:  # another writer first, without the birth
        node_id = ensure_node(session=session, name="n")
        stub = type(web)(node="n", tenant="acme", group="web", cgroup_id=web.cgroup_id,
                         wall=web.wall, monotonic=web.monotonic)
        incarnation_ids(session=session, node_id=node_id, samples=[stub])
    with scope() as session:
        record_samples(session=session, node="n", samples=samples)
    with scope() as session:
        got = session.execute(select(Group.created_at).where(Group.path == "acme/web")).all()
    assert got == [(web.created,)]


# --- issue #15 item 2: one bad group costs its own sample, never the pass -----------------

BIG_IO = "".join(f"{d // 256}:{d % 256} rbytes=1 wbytes=2 rios=3 wios=4 dbytes=5 dios=6\n"
                 for d in range(1400))  # 75 KiB: more than one 64 KiB read

#: (case, file, content, reason counted): the kernel never writes these, a fake or a
#: kernel bug might; ``None`` content: the file becomes a directory (pread: EISDIR)
BAD_FILES = [
    ("memory.stat non-integer", "memory.stat", "anon 12x\nfile 0\n", "parse"),
    ("cpu.stat garbage", "cpu.stat", "\x00\x01garbage\n", "parse"),
    ("cpu.stat truncated line", "cpu.stat", "usage_usec 52083\nuser_u", "parse"),
    ("io.stat bad tokens", "io.stat", "254:0 rbytes=1 wbytes\n", "parse"),
    ("io.stat max counter", "io.stat", "254:0 rbytes=max\n", "parse"),
    ("memory.current empty", "memory.current", "", "parse"),
    ("pressure no some line", "memory.pressure",
     "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n", "parse"),
    ("memory.events not UTF-8", "memory.events", b"low 0\nhigh \xff\xfe\n", "encoding"),
    ("io.stat 1 MiB", "io.stat", BIG_IO * 20, "too_large"),
    ("cpu.stat unreadable", "cpu.stat", None, "read"),
]


def _break(s: Sampler, group: Path, name: str, content: str | bytes | None) -> None:
    """Rewrite a file in place (as the kernel regenerates it: the reader's cached fd sees
    the new text); a directory instead of the file is a new inode: the reader reopens."""
    f = group / name
    if content is None or f.is_dir():
        f.unlink() if content is None else f.rmdir()
        s.reader.forget(s.layout.path(str(group.relative_to(group.parents[1]))))
    if content is None:
        f.mkdir()
    else:
        f.write_bytes(content if isinstance(content, bytes) else content.encode())


def slow_tier_of(s: Sampler, path: str) -> None:
    """Make the sampler's next pass the one that reads ``path``'s slow tier."""
    s.passes = 1
    while not s.reads_slow_tier(path):
        s.passes += 1


@pytest.mark.parametrize("accelerated", READ_PATHS)
@pytest.mark.parametrize(("name", "content", "reason"), [c[1:] for c in BAD_FILES],
                         ids=[c[0] for c in BAD_FILES])
def test_item2_one_bad_group_costs_only_its_own_sample(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, accelerated: bool, name: str,
        content: str | bytes | None, reason: str) -> None:
    root = tree(tmp_path)
    bad = root / "governor.slice/acme/web"
    s = Sampler(CgroupFS(root, verify=False), "governor.slice", "n", slow_every=1000,
                accelerated=accelerated)
    assert [x.path for x in s.sample().samples] == ["acme", "acme/db", "acme/web"]
    _break(s, bad, name, content)
    caplog.set_level(logging.INFO, logger="governor.sampler")
    for n in (1, 2):
        if name == "memory.stat":
            slow_tier_of(s, "acme/web")   # the pass that reads web's memory.stat
        else:
            s.passes = 1   # web's fast tier (the C loop when accelerated)
            assert not s.reads_slow_tier("acme/web")
        p = s.sample()
        assert [x.path for x in p.samples] == ["acme", "acme/db"]  # the others: sampled
        assert p.gone == [] and len(p.errors) == 1
        assert f"acme/web/{name}" in p.errors[0] and f"({reason})" in p.errors[0] \
            if reason != "read" else "[EISDIR]" in p.errors[0]
        assert dict(+s.error_counts) == {reason: n}
    failed = [r for r in caplog.records if r.getMessage() == "sample failed"]
    assert len(failed) == 1 and failed[0].group == "acme/web"  # type: ignore[attr-defined]
    assert failed[0].reason == reason  # type: ignore[attr-defined]
    # fixed: sampled again, said once; a later failure is logged again
    _break(s, bad, name, LEAF_FILES[name])
    s.reader.refresh()
    assert [x.path for x in s.sample().samples] == ["acme", "acme/db", "acme/web"]
    assert [r.getMessage() for r in caplog.records].count("sample read again") == 1
    assert dict(+s.error_counts) == {reason: 2}


@pytest.mark.parametrize("accelerated", READ_PATHS)
def test_item2_a_removed_group_is_gone_not_an_error(tmp_path: Path, accelerated: bool) -> None:
    import shutil

    root = tree(tmp_path)
    s = Sampler(CgroupFS(root, verify=False), "governor.slice", "n", slow_every=1000,
                accelerated=accelerated)
    s.sample()
    s.sample()
    shutil.rmtree(root / "governor.slice/acme/web")
    p = s.sample()
    assert p.gone == ["acme/web"] and p.errors == [] and dict(+s.error_counts) == {}
    assert [x.path for x in p.samples] == ["acme", "acme/db"]


@pytest.mark.parametrize("accelerated", READ_PATHS)
def test_item2_stat_file_larger_than_one_read_is_read_whole(tmp_path: Path,
                                                            accelerated: bool) -> None:
    """75 KiB of io.stat (1,400 devices): read whole, not cut at the 64 KiB buffer."""
    root = tree(tmp_path)
    (root / "governor.slice/acme/web/io.stat").write_text(BIG_IO)
    s = Sampler(CgroupFS(root, verify=False), "governor.slice", "n", slow_every=1000,
                accelerated=accelerated)
    for _ in range(3):
        web = {x.path: x for x in s.sample().samples}["acme/web"]
        assert len(web.io) == 1400 and web.io["5:119"]["rios"] == 3
    assert dict(+s.error_counts) == {}


def test_item2_sample_errors_metric(tmp_path: Path) -> None:
    from governor.exporter.render import Health, Snapshot, render
    from tests.helpers.exposition import parsed_samples

    root = tree(tmp_path)
    s = Sampler(CgroupFS(root, verify=False), "governor.slice", "n")
    s.sample()
    _break(s, root / "governor.slice/acme/web", "cpu.stat", "nope\n")
    s.sample()
    s.sample()
    text = render(Snapshot(node="n", groups=dict(s.latest),
                           health=Health(sample_errors=dict(s.error_counts)))).decode()
    got = parsed_samples(text)
    assert got[("governor_sample_errors_total", (("node", "n"), ("reason", "parse")))] == 2
    assert "# TYPE governor_sample_errors_total counter" in text


def test_first_reads_past_the_budget_are_left_for_the_next_passes(tmp_path: Path) -> None:
    """Groups read for the first time (their descriptors opened) take at most the
    sampler's first_read_budget of a pass, one at least: the others are deferred, neither
    sampled (missing, not zero) nor gone, and read in the next passes."""
    root = tree(tmp_path)
    full = Sampler(CgroupFS(root, verify=False), "governor.slice", "n")
    whole = {x.path: x for x in full.sample().samples}
    s = Sampler(CgroupFS(root, verify=False), "governor.slice", "n", first_read_budget=0.0)
    seen: list[list[str]] = []
    for _ in range(4):
        p = s.sample()
        assert p.gone == [] and p.errors == []
        got = [x.path for x in p.samples]
        assert sorted(got + p.deferred) == ["acme", "acme/db", "acme/web"]
        assert not set(got) & set(p.deferred)
        seen.append(got)
        for x in p.samples:   # each group's values as a pass without a budget reads them
            assert x.cpu_usage_usec == whole[x.path].cpu_usage_usec
            assert x.memory_current == whole[x.path].memory_current
    # one new group a pass (a budget of 0 s), the groups already open every pass
    assert [len(g) for g in seen] == [1, 2, 3, 3]
    assert all(set(a) <= set(b) for a, b in itertools.pairwise(seen))
    assert set(s.latest) == {"acme", "acme/db", "acme/web"}


def test_first_reads_past_the_most_a_pass_opens_are_left_for_the_next_passes(
        tmp_path: Path) -> None:
    """first_read_max (the daemon's pace, governor/daemon/pace.py) bounds how many groups a
    pass reads for the first time; the pass says how many it opened and what their reads
    took."""
    root = tree(tmp_path)
    s = Sampler(CgroupFS(root, verify=False), "governor.slice", "n", first_read_max=2)
    p = s.sample()
    assert (len(p.samples), len(p.deferred), p.opened) == (2, 1, 2)
    assert p.opened_s > 0
    s.first_read_max = 5
    p = s.sample()
    assert (len(p.samples), p.deferred, p.opened) == (3, [], 1)
    p = s.sample()
    assert (len(p.samples), p.deferred, p.opened, p.opened_s) == (3, [], 0, 0.0)


def test_the_oom_watchs_events_spare_the_passes_a_read_of_memory_events(
        tmp_path: Path) -> None:
    """The daemon's wiring: the OOM watch tells the sampler (Sampler.events_trust) which
    groups' memory.events it watches; their passes hand out the value read last until it
    tells of an event (the C path: the pure-Python one reads every time).  A path the
    layout cannot spell is ignored."""
    from governor.cgroupfs.reader import ACCELERATED

    root = tree(tmp_path)
    web = root / "governor.slice/acme/web"
    text = (web / "memory.events").read_text()
    s = Sampler(CgroupFS(root, verify=False), "governor.slice", "n", slow_every=1000)
    trust = s.events_trust()
    trust.watched("acme/web")
    trust.watched("acme/../../etc")          # no directory has it: nothing happens
    trust.changed("no/such")

    def kills() -> int | None:
        return {x.path: x for x in s.sample().samples}["acme/web"].memory_events_oom_kill

    # opened, then read once more and trusted; the first passes also carry the three
    # groups' slow tiers (slots 0, 1, 2 of 1000), which read it again all the same
    assert [kills() for _ in range(4)] == [0, 0, 0, 0]
    (web / "memory.events").write_text(text.replace("oom_kill 0", "oom_kill 3"))
    assert kills() == (0 if ACCELERATED else 3)   # no event told: handed out unread (C)
    trust.changed("acme/web")
    assert kills() == 3
    (web / "memory.events").write_text(text.replace("oom_kill 0", "oom_kill 4"))
    trust.unwatched(None)                    # the watch closing: read every pass again
    assert kills() == 4
    s.close()
