from __future__ import annotations

from pathlib import Path

from governor.cgroupfs.files import CgroupFS
from governor.metering.sampler import Sampler
from tests.unit.cgroupfs_fake import create_child


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
    # later passes skip memory.stat until the slow tier comes round again
    p2 = s.sample()
    assert not p2.slow and all(x.memory_stat_anon is None for x in p2.samples)
    assert s.sample().slow is False and s.sample().slow is True
    assert len({x.wall for x in p1.samples}) == 3  # stamped per read


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

    import pytest

    from governor.metering.sample import GroupSample
    from governor.metering.sampler import _SAMPLE_FIELDS, _make_sample

    root = tree(tmp_path)
    s = Sampler(CgroupFS(root, verify=False), "governor.slice", "n")
    for x in s.sample().samples:
        values = [getattr(x, name) for name in _SAMPLE_FIELDS]
        again = GroupSample(**dict(zip(_SAMPLE_FIELDS, values, strict=True)))
        assert _make_sample(values) == again and dataclasses.astuple(again) == tuple(values)
        with pytest.raises(dataclasses.FrozenInstanceError):
            x.node = "other"  # type: ignore[misc]
    bad = [getattr(x, name) for name in _SAMPLE_FIELDS]
    bad[_SAMPLE_FIELDS.index("psi")] = {"nope": 1}
    with pytest.raises(ValueError, match="unknown PSI key"):
        _make_sample(bad)  # __post_init__ still checks


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
