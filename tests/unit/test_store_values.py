"""The generic controllers' values in the store (migration 0003): ``sample_values`` written
with their samples (a replay does not double them), deleted with them by retention, carried
through the spool; an upgrade from 0002 keeps every row; on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, inspect, select, text, update

from governor.metering.sample import GroupSample
from governor.store.db import make_engine, scope_factory, upgrade
from governor.store.service import apply_retention, record_samples
from governor.store.spool import Spool, sample_from_json, sample_to_json
from governor.store.tables import groups, sample_values, samples, usage_values
from tests.helpers.db import db_url, engine, make_sample  # noqa: F401

T0 = datetime(2026, 11, 1, tzinfo=UTC)
V = {"hugetlb.2MB.current": 4194304, "hugetlb.2MB.events_max": 3,
     "hugetlb.1GB.current": (1 << 63) - 1}


def with_values(s: GroupSample, values: dict[str, int] | None) -> GroupSample:
    return dataclasses.replace(s, values=values)


def _batch(i: int) -> list[GroupSample]:
    wall = T0 + timedelta(seconds=10 * i)
    return [with_values(make_sample(group="web", cgroup_id=10, wall=wall, cpu=i), V),
            with_values(make_sample(group="db", cgroup_id=11, wall=wall, cpu=i), None),
            with_values(make_sample(group=None, cgroup_id=9, wall=wall, cpu=i),
                        {"hugetlb.2MB.current": i})]


def _values(eng):
    with eng.connect() as conn:
        return sorted(conn.execute(
            select(groups.c.path, sample_values.c.ts, sample_values.c.key,
                   sample_values.c.value).join(groups, groups.c.id == sample_values.c.group_id)
        ).all())


def test_values_are_stored_with_their_samples_once(engine) -> None:  # noqa: F811
    scope = scope_factory(engine)
    for _ in range(2):  # a replayed batch is not doubled
        with scope() as s:
            record_samples(session=s, node="n1", samples=_batch(0))
    got = _values(engine)
    assert [(p, k, v) for p, _, k, v in got] == [
        ("acme", "hugetlb.2MB.current", 0),
        ("acme/web", "hugetlb.1GB.current", (1 << 63) - 1),
        ("acme/web", "hugetlb.2MB.current", 4194304),
        ("acme/web", "hugetlb.2MB.events_max", 3)]
    assert {ts for _, ts, _, _ in got} == {T0}


def test_retention_deletes_values_with_their_samples(engine) -> None:  # noqa: F811
    scope = scope_factory(engine)
    with scope() as s:
        for i in range(3):
            record_samples(session=s, node="n1", samples=_batch(i))
        # metered up to the second pass: the first is past retention, the anchor stays
        s.execute(update(groups).values(metered_until=T0 + timedelta(seconds=10)))
        gid = s.execute(select(groups.c.id).where(groups.c.path == "acme/web")).scalar_one()
        node_id = s.execute(select(groups.c.node_id).where(groups.c.id == gid)).scalar_one()
        s.execute(usage_values.insert(), [
            {"node_id": node_id, "group_id": gid, "end_ts": T0 + timedelta(seconds=10 * i),
             "quantity": "hugetlb_byte_seconds", "value": i} for i in (1, 2)])
    with scope() as s:
        apply_retention(session=s, before=T0 + timedelta(seconds=15))
    with engine.connect() as conn:  # the interval usage older than retention goes too
        assert conn.execute(select(usage_values.c.value)).scalars().all() == [2]
    with engine.connect() as conn:
        kept_samples = {r.ts for r in conn.execute(select(samples.c.ts))}
    kept_values = {ts for _, ts, _, _ in _values(engine)}
    assert kept_samples == kept_values == {T0 + timedelta(seconds=10),
                                           T0 + timedelta(seconds=20)}


def test_values_survive_the_spool(engine, tmp_path) -> None:  # noqa: F811
    s = _batch(0)[0]
    assert sample_from_json(json.loads(json.dumps(sample_to_json(s)))) == s
    assert sample_from_json(sample_to_json(_batch(0)[1])).values is None
    old = sample_to_json(s)
    del old["values"]  # a journal line of a governor before the generic values
    assert sample_from_json(old).values is None
    spool = Spool(tmp_path / "j.jsonl", max_samples=100)
    spool.put("n1", _batch(0), reason="test")
    assert spool.drain(scope_factory(engine)) == 1
    assert len(_values(engine)) == 4


def test_migration_0003_keeps_every_row_of_a_0002_database(db_url) -> None:  # noqa: F811
    from tests.unit.test_store_schema import _ROWS_0001

    assert upgrade(db_url, "0002") == "0002"
    eng = make_engine(db_url)
    try:
        with eng.begin() as conn:
            for sql in _ROWS_0001:
                conn.execute(text(sql))
            conn.execute(text("UPDATE samples SET storage_bytes = 77"))
        before = inspect(eng).get_table_names()
        assert "sample_values" not in before
        assert upgrade(eng, "0003") == "0003"
        assert {"sample_values", "usage_values", "rollup_values"} <= set(
            inspect(eng).get_table_names())
        with eng.connect() as conn:
            for table in ("samples", "usage_intervals", "rollups_hourly", "price_plans",
                          "groups"):
                assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 1
            assert conn.execute(text("SELECT storage_bytes, memory_current FROM samples")
                                ).one() == (77, 4096)
            assert conn.execute(text("SELECT quantity_prices FROM price_plans")
                                ).scalar() is None
        if eng.dialect.name == "sqlite":
            with eng.connect() as conn:
                for table in ("sample_values", "rollup_values"):
                    ddl = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = "
                                            f"'{table}'")).scalar()
                    assert "WITHOUT ROWID" in ddl
        # the new tables take rows at once (the writers are the head's: nodes.uid, 0004)
        upgrade(eng)
        with scope_factory(eng)() as s:
            record_samples(session=s, node="n1", samples=_batch(0))
        with eng.connect() as conn:
            assert conn.execute(select(func.count()).select_from(sample_values)
                                ).scalar_one() == 4
        from alembic import command

        from governor.store.db import alembic_config

        with eng.begin() as conn:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0002")
        assert "sample_values" not in inspect(eng).get_table_names()
        assert "quantity_prices" not in {c["name"] for c in
                                         inspect(eng).get_columns("price_plans")}
        with eng.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM samples")).scalar() == 4
        assert upgrade(eng, "0003") == "0003"
    finally:
        eng.dispose()
