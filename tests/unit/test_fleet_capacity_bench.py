"""bench/fleet_capacity.py's simulated node writes what the daemon writes: its passes,
metered in memory and written every ``write_every`` passes, bill exactly the counters it
made up (SQLite here; the bench runs it on PostgreSQL)."""

from __future__ import annotations

import importlib.util
import queue
import sys
import time
from datetime import timedelta
from pathlib import Path
from types import ModuleType

from sqlalchemy import func, select

from governor.store import tables
from governor.store.db import make_engine, upgrade

BENCH = Path(__file__).resolve().parents[2] / "bench" / "fleet_capacity.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fleet_capacity_bench", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_pct_is_nearest_rank() -> None:
    fc = _bench()
    values = [float(v) for v in range(1, 101)]
    assert fc.pct(values, 50) == 50.0
    assert fc.pct(values, 99) == 99.0
    assert fc.pct([3.0], 99) == 3.0


def test_a_simulated_node_meters_its_counters_exactly(tmp_path: Path) -> None:
    fc = _bench()
    url = f"sqlite:///{tmp_path}/fleet.db"
    upgrade(url)
    results: queue.Queue[dict[str, object]] = queue.Queue()
    fc.node_worker(url, "node-000", 150, time.time(), 1.5, results)
    got = results.get_nowait()
    passes = got["passes"]
    assert isinstance(passes, int) and passes >= fc.WRITE_EVERY
    engine = make_engine(url)
    g, r, u = tables.groups.c, tables.rollups_hourly.c, tables.usage_intervals.c
    with engine.connect() as conn:
        samples = conn.execute(select(func.count()).select_from(tables.samples)).scalar_one()
        rows = conn.execute(select(
            g.path, g.cgroup_id, g.metered_until,
            select(func.sum(r.cpu_usec)).where(r.group_id == g.id).scalar_subquery(),
            select(func.sum(u.cpu_usec)).where(u.group_id == g.id).scalar_subquery())).all()
    engine.dispose()
    assert samples == got["samples"] == passes * 152   # 150 groups + their 2 tenants
    assert len(rows) == 152
    for path, cid, until, rolled, intervals in rows:
        # metered up to the last write: counters from 0 at pass 0 to pass k there
        k = round((until - fc.T0) / timedelta(seconds=10))
        assert k >= fc.WRITE_EVERY - 1, path
        assert rolled == intervals == k * (1_000_000 + cid % 997 * 1000), path
