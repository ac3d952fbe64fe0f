"""Issue #16: the daemon's own cost, the parts a unit test can show (the figures are
``bench/run daemon_cost``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from governor.daemon import limit_arenas

REPO = Path(__file__).resolve().parents[2]


def test_malloc_arenas_limited_unless_the_environment_says() -> None:
    # in a child: mallopt changes the process for good
    code = ("from governor.daemon import limit_arenas; import ctypes, sys; "
            "sys.exit(0 if limit_arenas() else 3)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_malloc_arena_max_from_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_arenas() is False


def test_the_daemon_path_never_loads_the_orm(tmp_path: Path) -> None:
    """Issue #16: ``sqlalchemy.orm`` (with the declarative models, 7 MiB resident) is not
    part of ``governor run``: not among its imports (the run command's module and every
    module governor/daemon/ imports, anywhere in it), nor loaded by what a pass does
    with the store (samples stored and metered, a policy and its prices recorded, an OOM
    event, the cost gauge's invoice, retention).  The reporting models still load it."""
    code = f"""
import ast, importlib, sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from governor.cli import _load, main_group
_load(main_group, "run")
for node in (n for p in sorted(Path({str(REPO / "governor/daemon")!r}).glob("*.py"))
             for n in ast.walk(ast.parse(p.read_text()))):
    if isinstance(node, ast.Import):
        for a in node.names:
            importlib.import_module(a.name)
    elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
        importlib.import_module(node.module)
imported = "sqlalchemy.orm" in sys.modules
from governor.billing.history import record_price_plans, with_recorded_prices
from governor.billing.report import invoice
from governor.policy import load_policy
from governor.store.db import upgrade
from governor.store.gate import Database
from governor.metering.catchup import meter
from governor.store.service import (apply_retention, record_applied_policy,
                                    record_oom_event, store_samples)
from tests.helpers.db import make_sample
url = "sqlite:///" + sys.argv[1]
import subprocess
subprocess.run([sys.executable, "-c", "import sys; from governor.store.db import upgrade; "
                "upgrade(sys.argv[1])", url], check=True)
db = Database(url, node=("n1", "0f8fad5b-d9cb-469f-a165-70867728950e"))
assert db.check(), db.problem
pol = load_policy([{str(REPO / "examples/policy.d")!r}])
t0 = datetime(2026, 1, 1, tzinfo=UTC)
with db.scope() as s:
    for i in range(3):
        store_samples(session=s, node="n1", samples=[make_sample(
            node="n1", group="g", cgroup_id=7, cpu=1000 * i, mem=1 << 20, rbytes=4096 * i,
            wall=t0 + timedelta(seconds=10 * i))])
    assert meter(session=s, node="n1").intervals == 2
    record_applied_policy(session=s, node="n1", applied_at=t0, policy_hash="h",
                          trigger="start", writes=[])
    record_price_plans(session=s, plans=pol.plans, now=t0)
    record_oom_event(session=s, node="n1", tenant="acme", group="g", cgroup_id=7, ts=t0,
                     kind="oom_kill", count=1)
    tenant = next(iter(pol.tenants))
    invoice(session=s, policy=with_recorded_prices(pol, s), tenant=tenant, start=t0,
            end=t0 + timedelta(days=1), node="n1")
    apply_retention(session=s, before=t0)
db.dispose()
used = "sqlalchemy.orm" in sys.modules
import governor.store.models
print(imported, used, "sqlalchemy.orm" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "g.db")],
                         capture_output=True, text=True, check=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(
                             [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])})
    assert out.stdout.split() == ["False", "False", "True"], out.stdout + out.stderr
