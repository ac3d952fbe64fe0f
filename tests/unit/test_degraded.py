"""A governor that runs but not fully: failed cgroup writes are never "applied" at info level,
/healthz says degraded (and why) while /livez stays up, and the gauges say it too."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from governor.cgroupfs.files import CgroupFS
from governor.enforce.keeper import Enforcer
from governor.exporter.render import Health, Snapshot, render
from governor.exporter.server import Exporter
from tests.helpers.exposition import parsed_samples
from tests.unit.cgroupfs_fake import LEAF_FILES, create_child
from tests.unit.test_exporter_server import get


@pytest.fixture
def enforcer(tmp_path: Path) -> Iterator[tuple[Enforcer, Path]]:
    root = tmp_path / "cg"
    root.mkdir()
    sub = create_child(root, "governor.slice")
    acme = create_child(sub, "acme")
    # cpu.weight cannot be written: a symlink in its place (refused by openat2's
    # RESOLVE_NO_SYMLINKS, even for root)
    (tmp_path / "elsewhere").write_text("100\n")
    (acme / "cpu.weight").unlink()
    (acme / "cpu.weight").symlink_to(tmp_path / "elsewhere")
    pol = tmp_path / "policy.toml"
    pol.write_text("[tenants.acme]\ncpu.weight = 300\nmemory.max = \"1G\"\n")
    pol.chmod(0o644)
    fs = CgroupFS(root, verify=False)
    try:
        yield Enforcer(fs, "governor.slice", str(pol), sys_block=str(tmp_path / "none")), acme
    finally:
        fs.close()


def test_failed_write_is_an_error_not_applied_at_info(
        enforcer: tuple[Enforcer, Path], caplog: pytest.LogCaptureFixture) -> None:
    e, acme = enforcer
    caplog.set_level(logging.DEBUG, logger="governor")
    assert e.reload(trigger="start")
    applied = [r for r in caplog.records if r.getMessage().startswith("policy applied")]
    assert len(applied) == 1
    assert applied[0].levelno == logging.ERROR and applied[0].__dict__["failed"] == 1
    assert "failed writes" in applied[0].getMessage()
    assert e.last_failed == 1 and e.write_errors == 1
    assert (acme / "memory.max").read_text().strip() == str(1 << 30)   # the others made
    # fixed behind its back: the next reconcile writes it, and the gauge goes back to 0
    caplog.clear()
    (acme / "cpu.weight").unlink()
    (acme / "cpu.weight").write_text(LEAF_FILES["cpu.weight"])
    e.reconcile()
    assert e.last_failed == 0 and e.write_errors == 1
    assert (acme / "cpu.weight").read_text().strip() == "300"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # and an apply with nothing failing is info
    caplog.clear()
    assert e.reload(trigger="reload")
    applied = [r for r in caplog.records if r.getMessage().startswith("policy applied")]
    assert [r.levelno for r in applied] == [logging.INFO]


def test_gauges_rendered() -> None:
    body = render(Snapshot(node="n1", groups={}, health=Health(
        enforce_write_errors=3, policy_failed_writes=1, database_up=False))).decode()
    s = parsed_samples(body)
    assert s[("governor_policy_failed_writes", (("node", "n1"),))] == 1.0
    assert s[("governor_database_up", (("node", "n1"),))] == 0.0
    assert s[("governor_enforce_write_errors_total", (("node", "n1"),))] == 3.0
    assert "# TYPE governor_database_up gauge" in body
    up = render(Snapshot(node="n1", groups={}, health=Health(database_up=True))).decode()
    assert parsed_samples(up)[("governor_database_up", (("node", "n1"),))] == 1.0
    # unknown (not wired) is no series, not 0
    assert "governor_database_up" not in render(Snapshot(node="n1", groups={})).decode()


def test_healthz_degraded_with_the_reasons_livez_still_up() -> None:
    exp = Exporter("127.0.0.1:0", stale_after=30)
    exp.start()
    try:
        exp.publish(b"")
        assert get(exp.url + "/healthz")[0] == 200
        exp.set_problems(["database down: connection refused", "1 failed cgroup write"])
        code, headers, data = get(exp.url + "/healthz")
        doc = json.loads(data)
        assert code == 503 and headers["Content-Type"] == "application/json"
        assert doc["status"] == "degraded"
        assert doc["problems"] == ["database down: connection refused", "1 failed cgroup write"]
        code, _, data = get(exp.url + "/livez")
        assert code == 200 and json.loads(data)["status"] == "degraded"
        exp.set_problems([])
        code, _, data = get(exp.url + "/healthz")
        assert code == 200 and json.loads(data)["problems"] == []
    finally:
        exp.stop()


def test_livez_fails_when_stale() -> None:
    exp = Exporter("127.0.0.1:0", stale_after=30)
    exp.start()
    try:
        code, _, data = get(exp.url + "/livez")        # nothing published yet
        assert code == 503 and json.loads(data)["status"] == "stale"
    finally:
        exp.stop()


