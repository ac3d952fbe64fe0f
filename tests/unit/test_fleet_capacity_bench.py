"""bench/fleet_capacity.py's simulated node writes what the daemon writes: its passes,
metered in memory and written every ``write_every`` passes, bill exactly the counters it
made up (SQLite here; the bench runs it on PostgreSQL)."""

from __future__ import annotations

import importlib.util
import queue
import sys
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


def test_simulated_nodes_meter_their_counters_exactly(tmp_path: Path) -> None:
    fc = _bench()
    url = f"sqlite:///{tmp_path}/fleet.db"
    upgrade(url)
    nodes = [fc.SimNode(url, f"node-{n:03d}", 150) for n in range(2)]
    for _ in range(fc.WRITE_EVERY + 2):   # a pass of each in turn, as node_worker runs them
        for node in nodes:
            node.one_pass()
    for node in nodes:
        node.engine.dispose()
        assert node.samples == (fc.WRITE_EVERY + 2) * 152   # 150 groups + their 2 tenants
        assert len(node.meter_s) == 1 and len(node.store_s) == fc.WRITE_EVERY + 2
    engine = make_engine(url)
    g, r, u = tables.groups.c, tables.rollups_hourly.c, tables.usage_intervals.c
    with engine.connect() as conn:
        samples = conn.execute(select(func.count()).select_from(tables.samples)).scalar_one()
        rows = conn.execute(select(
            g.path, g.cgroup_id, g.metered_until,
            select(func.sum(r.cpu_usec)).where(r.group_id == g.id).scalar_subquery(),
            select(func.sum(u.cpu_usec)).where(u.group_id == g.id).scalar_subquery())).all()
    engine.dispose()
    assert samples == 2 * (fc.WRITE_EVERY + 2) * 152
    assert len(rows) == 2 * 152
    for path, cid, until, rolled, intervals in rows:
        # metered up to the one write, at pass WRITE_EVERY - 1: counters from 0 at pass 0
        k = round((until - fc.T0) / timedelta(seconds=10))
        assert k == fc.WRITE_EVERY - 1, path
        assert rolled == intervals == k * (1_000_000 + cid % 997 * 1000), path


def test_node_worker_reports_each_of_its_nodes(tmp_path: Path) -> None:
    fc = _bench()
    url = f"sqlite:///{tmp_path}/fleet.db"
    upgrade(url)
    results: queue.Queue[dict[str, object]] = queue.Queue()
    fc.node_worker(url, ["a", "b"], 20, 0.2, results)
    got = sorted((results.get_nowait() for _ in range(2)), key=lambda d: str(d["node"]))
    assert [d["node"] for d in got] == ["a", "b"]
    passes = [d["passes"] for d in got]
    assert passes[0] == passes[1] and isinstance(passes[0], int) and passes[0] >= 1
    assert results.empty()
