"""``governor events``: filters and formats over a real SQLite database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from governor.cli import main
from governor.oom.cli import parse_since
from governor.oom.events import OomEvent
from governor.oom.store import DbSink
from governor.store.db import make_engine, scope_factory, upgrade


@pytest.fixture
def config(tmp_path: Path) -> Path:
    url = f"sqlite:///{tmp_path}/db/g.db"
    upgrade(url)
    eng = make_engine(url)
    sink = DbSink(scope_factory(eng), "n1")
    now = datetime.now(UTC)
    sink.record([
        OomEvent(node="n1", tenant="acme", group="web", cgroup_id=11, ts=now - timedelta(hours=3),
                 kind="oom_kill", count=1, pid=4242, comm="python3", rss_bytes=100 << 20),
        OomEvent(node="n1", tenant="acme", group=None, cgroup_id=10, ts=now - timedelta(hours=3),
                 kind="oom_kill", count=2, missed_while_down=True),
        OomEvent(node="n1", tenant="globex", group="api", cgroup_id=21, ts=now,
                 kind="pressure", count=1),
    ])
    eng.dispose()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[database]\nurl = "{url}"\n')
    return cfg


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, object]]:
    assert main(["events", *args, "--format", "json"]) == 0
    events = json.loads(capsys.readouterr().out)["events"]
    assert isinstance(events, list)
    return events


def test_events_json_and_filters(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = ["--config", str(config)]
    rows = run_json(capsys, *c)
    assert [(r["tenant"], r["group"], r["kind"], r["count"], r["pid"], r["comm"],
             r["missed_while_down"]) for r in rows] == [
        ("acme", "web", "oom_kill", 1, 4242, "python3", False),
        ("acme", None, "oom_kill", 2, None, None, True),
        ("globex", "api", "pressure", 1, None, None, False)]
    assert [r["kind"] for r in run_json(capsys, *c, "--tenant", "globex")] == ["pressure"]
    assert len(run_json(capsys, *c, "--kind", "oom_kill")) == 2
    assert [r["tenant"] for r in run_json(capsys, *c, "--since", "1h")] == ["globex"]


def test_events_table(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "python3" in out and "4242" in out and "100.0 MiB" in out
    assert "missed while down" in out
    assert main(["events", "--config", str(config), "--since", "2099-01-01"]) == 0
    assert "no events" in capsys.readouterr().out
    # an unknown tenant is a usage error, as in usage/bill/ps/launch (tests/unit/
    # test_unknown_tenant.py), not an empty list
    assert main(["events", "--config", str(config), "--tenant", "nobody"]) == 2
    assert "unknown tenant 'nobody'" in capsys.readouterr().err


def test_bad_since_is_a_usage_error(config: Path) -> None:
    assert main(["events", "--config", str(config), "--since", "yesterday"]) == 2


def test_parse_since() -> None:
    now = datetime(2026, 1, 2, 12, tzinfo=UTC)
    assert parse_since("90m", now) == now - timedelta(minutes=90)
    assert parse_since("2026-01-01T00:00:00", now) == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_since("2026-01-01T01:00:00+01:00", now) == datetime(2026, 1, 1, tzinfo=UTC)
