"""Issue #18: a node's identity survives a change of hostname.  The daemon's node uid (a
file in its state directory, made once, 0600) is claimed by the database gate before any
write: the same uid under a new name renames its row (history kept), a row of older data
without a uid is adopted, another uid's name is refused (two hosts never share a node's
rows); the spool and the catch-up go through the same row.  Migration 0004 on SQLite and
PostgreSQL."""

from __future__ import annotations

import logging
import os
import stat
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, inspect, select, text

from governor.errors import ConfigError
from governor.metering.catchup import meter
from governor.store.db import alembic_config, make_engine, scope_factory, upgrade
from governor.store.errors import DatabaseUnavailable, NodeNameTaken
from governor.store.gate import Database
from governor.store.nodeuid import UID_FILE, load_node_uid
from governor.store.service import ensure_node, record_samples
from governor.store.spool import Spool, SpoolingWriter
from governor.store.tables import groups, nodes, samples
from tests.helpers.db import db_url, engine, make_sample  # noqa: F401

T0 = datetime(2026, 11, 1, tzinfo=UTC)
U1 = "0f8fad5b-d9cb-469f-a165-70867728950e"
U2 = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


def _nodes(eng: Engine) -> list[tuple[int, str, str | None]]:
    with eng.connect() as conn:
        return [tuple(r) for r in conn.execute(  # type: ignore[misc]
            select(nodes.c.id, nodes.c.name, nodes.c.uid).order_by(nodes.c.id))]


# -- the uid file ------------------------------------------------------------------------

def test_the_uid_is_made_once_private_and_kept(tmp_path: Path) -> None:
    state = tmp_path / "state"
    uid = load_node_uid(state)
    assert str(uuid.UUID(uid)) == uid and uuid.UUID(uid).version == 4
    f = state / UID_FILE
    assert f.read_text() == uid + "\n"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert load_node_uid(state) == uid                 # kept, not made again
    assert [p.name for p in state.iterdir()] == [UID_FILE]   # no tmp, no lock file
    other = tmp_path / "other"
    assert load_node_uid(other) != uid                 # another host, another identity


def test_the_umask_does_not_open_the_file(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        load_node_uid(tmp_path / "s")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "s" / UID_FILE).stat().st_mode) == 0o600


@pytest.mark.parametrize("content", ["", "not-a-uuid\n", "0f8fad5b-d9cb-469f\n"])
def test_a_damaged_uid_file_names_the_file_and_the_fix(tmp_path: Path, content: str) -> None:
    (tmp_path / UID_FILE).write_text(content)
    os.chmod(tmp_path / UID_FILE, 0o600)
    with pytest.raises(ConfigError) as info:
        load_node_uid(tmp_path)
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / UID_FILE}: not a node uid: {content.strip()!r}")
    assert "put back this node's uid" in msg
    assert (tmp_path / UID_FILE).read_text() == content  # never overwritten


def test_a_symlinked_uid_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text(U1 + "\n")
    (tmp_path / "s").mkdir(mode=0o700)
    (tmp_path / "s" / UID_FILE).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(Exception, match="symlink"):
        load_node_uid(tmp_path / "s")


# -- ensure_node: the four cases ---------------------------------------------------------

def test_a_new_uid_and_name_is_a_new_row(engine: Engine) -> None:  # noqa: F811
    with scope_factory(engine)() as s:
        a = ensure_node(session=s, name="host-a", uid=U1)
        assert ensure_node(session=s, name="host-a", uid=U1) == a
        assert ensure_node(session=s, name="host-a") == a   # by name: the same row
    assert _nodes(engine) == [(a, "host-a", U1)]


def test_the_same_uid_under_a_new_hostname_keeps_its_history(
        engine: Engine, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    caplog.set_level(logging.INFO, logger="governor.store")
    with scope_factory(engine)() as s:
        nid = ensure_node(session=s, name="old-host", uid=U1)
        record_samples(session=s, node="old-host", samples=[
            make_sample(node="old-host", cgroup_id=5, wall=T0, cpu=1)])
    with scope_factory(engine)() as s:
        assert ensure_node(session=s, name="new-host", uid=U1) == nid
    assert _nodes(engine) == [(nid, "new-host", U1)]
    with engine.connect() as conn:
        assert conn.execute(select(groups.c.node_id)).scalars().all() == [nid]
    [line] = [r for r in caplog.records if "renamed" in r.getMessage()]
    assert line.levelno == logging.INFO
    assert line.getMessage().startswith("node renamed: old-host -> new-host")


def test_a_row_of_older_data_without_a_uid_is_adopted(engine: Engine) -> None:  # noqa: F811
    with scope_factory(engine)() as s:
        old = ensure_node(session=s, name="host-a")  # as governor wrote it before 0004
    assert _nodes(engine) == [(old, "host-a", None)]
    with scope_factory(engine)() as s:
        assert ensure_node(session=s, name="host-a", uid=U1) == old
    assert _nodes(engine) == [(old, "host-a", U1)]


def test_another_uid_never_takes_a_live_node_name(engine: Engine) -> None:  # noqa: F811
    with scope_factory(engine)() as s:
        a = ensure_node(session=s, name="host-a", uid=U1)
        b = ensure_node(session=s, name="host-b", uid=U2)
    for name, uid in (("host-a", U2),      # a second host configured with a's name
                      ("host-b", U1)):     # a renamed to a name b holds
        with pytest.raises(NodeNameTaken) as info, scope_factory(engine)() as s:
            ensure_node(session=s, name=name, uid=uid)
        msg = str(info.value)
        assert f"node name {name!r} is taken" in msg
        assert uid in msg and (U1 if uid == U2 else U2) in msg   # both identities named
        assert 'node = "<another name>"' in msg
        assert info.value.exit_code == 2
    assert _nodes(engine) == [(a, "host-a", U1), (b, "host-b", U2)]   # nothing merged


# -- the database gate claims the node; the spool follows --------------------------------

def test_the_gate_claims_the_node_before_any_write(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/g.db"
    upgrade(url)
    eng = make_engine(url)
    with scope_factory(eng)() as s:
        a = ensure_node(session=s, name="host-a", uid=U1)
        record_samples(session=s, node="host-a", samples=[
            make_sample(node="host-a", cgroup_id=5, wall=T0 + timedelta(seconds=10 * i),
                        cpu=1000 * i) for i in range(2)])
    # host-a renamed to host-c, with samples spooled under the old name meanwhile
    spool = Spool(tmp_path / "spool", max_samples=1000)
    spool.put("host-a", [make_sample(node="host-a", cgroup_id=5, wall=T0 + timedelta(
        seconds=20), cpu=2000)], reason="test")
    spool.put("host-c", [make_sample(node="host-c", cgroup_id=5, wall=T0 + timedelta(
        seconds=30), cpu=3000)], reason="test")
    db = Database(url, node=("host-c", U1))
    assert db.check(), db.problem
    writer = SpoolingWriter(spool=spool, session_scope=db.scope, node="host-c")
    assert writer.drain() == 2
    assert _nodes(eng) == [(a, "host-c", U1)]
    with db.scope() as s:
        assert s.execute(select(func.count()).select_from(samples).where(
            samples.c.node_id == a)).scalar_one() == 4
        # the catch-up meters by name: the same node's rows, all four samples paired
        assert meter(session=s, node="host-c").intervals == 3
    db.dispose()
    # a second host configured with the same name: refused at the gate, nothing written
    db2 = Database(url, node=("host-c", U2))
    assert not db2.check()
    assert db2.problem is not None and db2.problem.startswith("node identity: node name")
    assert U1 in db2.problem and U2 in db2.problem
    with pytest.raises(DatabaseUnavailable), db2.scope():
        pass
    db2.dispose()
    assert _nodes(eng) == [(a, "host-c", U1)]
    eng.dispose()


# -- migration 0004 ----------------------------------------------------------------------

def test_migration_0004_keeps_every_row(db_url: str) -> None:  # noqa: F811
    from alembic import command

    from tests.unit.test_store_schema import _ROWS_0001

    assert upgrade(db_url, "0003") == "0003"
    eng = make_engine(db_url)
    try:
        with eng.begin() as conn:
            for sql in _ROWS_0001:
                conn.execute(text(sql))
        assert "uid" not in {c["name"] for c in inspect(eng).get_columns("nodes")}
        assert upgrade(eng) == "0004"
        assert _nodes(eng)[0][1:] == ("n1", None)
        with eng.connect() as conn:
            for table in ("samples", "groups", "rollups_hourly"):
                assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 1
        with scope_factory(eng)() as s:   # the old row is adopted; uids are unique
            assert ensure_node(session=s, name="n1", uid=U1) == 1
            ensure_node(session=s, name="n2", uid=U2)
        with pytest.raises(Exception, match=r"(?i)unique"), eng.begin() as conn:
            conn.execute(text(f"UPDATE nodes SET uid = '{U1}' WHERE name = 'n2'"))
        with eng.begin() as conn:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0003")
        assert "uid" not in {c["name"] for c in inspect(eng).get_columns("nodes")}
        with eng.connect() as conn:
            assert conn.execute(text("SELECT name FROM nodes ORDER BY id")).scalars().all() \
                == ["n1", "n2"]
            assert conn.execute(text("SELECT count(*) FROM samples")).scalar() == 1
        assert upgrade(eng) == "0004"
    finally:
        eng.dispose()


def test_commands_find_the_uid_the_daemon_made(tmp_path: Path) -> None:
    """``governor policy apply`` (the enforcer's recorder) on a renamed host writes into
    the node's row, not into a new one under the new name."""
    from governor.config import load_config
    from governor.enforce.record import db_recorder
    from governor.store.nodeuid import read_node_uid

    state = tmp_path / "state"
    assert read_node_uid(state) is None           # never made: by name
    uid = load_node_uid(state)
    assert read_node_uid(state) == uid
    url = f"sqlite:///{tmp_path}/g.db"
    upgrade(url)
    eng = make_engine(url)
    with scope_factory(eng)() as s:
        nid = ensure_node(session=s, name="old-host", uid=uid)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[database]\nurl = "{url}"\n[governor]\nnode = "new-host"\n'
                   f'state_dir = "{state}"\n')
    recorder, why = db_recorder(load_config(cfg, environ={}))
    assert recorder is not None, why
    recorder("d1", "test", [], {})
    assert _nodes(eng) == [(nid, "new-host", uid)]
    eng.dispose()
