"""The parts of one daemon sampling pass on the host, per stage, at N groups.

Run: ``.venv/bin/python bench/daemon_pass.py [--groups 1000] [--passes 8] [--gc-young N]``.

A fake cgroup tree (tmpfs files holding real 6.1 kernel output, ``tests/unit/cgroupfs_fake``)
of N groups in tenants of 100 and an SQLite store; each pass runs what ``Daemon.sample``
runs, stage by stage: ``Sampler.sample()`` (read and parse), ``record_samples`` (raw rows),
``meter`` (interval usage, hourly rollups, anchors) and ``render`` (the exposition).  The
CPU time of each stage is printed (min, median and max over the passes after two
warm-ups), so a stage that grows out of proportion shows at once, and a pass that carries
more than the others (``sample``'s max: the slow tier) too.  The real-kernel figures of the whole
daemon are ``bench/run daemon_cost``.

``meter`` is the daemon's way since issue #16 (``Meter.step_into`` against the previous
pass's samples in memory, into a ``Pending`` written each pass with ``write_metered``);
``meter_db`` is the store's ``meter()`` over the stored rows (the way before, and the
catch-up after a start), run on a second node of the same database from the same samples,
for comparison.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.reader import raise_nofile_limit
from governor.daemon import GC_YOUNG
from governor.exporter.render import Health, Snapshot, render
from governor.metering.catchup import load_anchors, meter
from governor.metering.meter import Meter, Pending
from governor.metering.sampler import Sampler
from governor.store.db import make_engine, scope_factory, upgrade
from governor.store.metered import write_metered
from governor.store.service import Incarnations, record_samples, store_samples
from tests.unit.cgroupfs_fake import create_groups


def cpu() -> float:
    return time.process_time()   # every thread of this process, in nanoseconds


class GcTimer:
    """Collections and the time they took, from gc.callbacks."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self._t0 = 0.0

    def __call__(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.count += 1
            self.seconds += time.perf_counter() - self._t0


def resolve(unknown: list[Any], *, session: Any, node_id: int, ids: Any) -> Any:
    return load_anchors(session=session, node="bench", node_id=node_id, samples=unknown,
                        ids=ids)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--passes", type=int, default=8)
    ap.add_argument("--gc-young", type=int, default=GC_YOUNG, metavar="N",
                    help="the collector's first threshold after the warm-up, as the daemon "
                    f"sets it (default {GC_YOUNG}; CPython's own: 700)")
    args = ap.parse_args()
    gct = GcTimer()
    raise_nofile_limit()  # as the daemon: ~12 descriptors per group
    tmp = Path(tempfile.mkdtemp(prefix="governor-pass-"))
    create_groups(tmp / "cg" / "gov", args.groups)
    url = f"sqlite:///{tmp}/governor.db"
    upgrade(url)
    engine = make_engine(url)
    scope = scope_factory(engine)
    fs = CgroupFS(tmp / "cg", verify=False)
    sampler = Sampler(fs, "gov", "bench")
    times: dict[str, list[float]] = {}
    m = Meter()
    inc = Incarnations()
    for p in range(args.passes + 2):
        c0 = cpu()
        ps = sampler.sample()
        c1 = cpu()
        with scope() as session:
            node_id, ids = store_samples(session=session, node="bench", samples=ps.samples,
                                         incarnations=inc)
        c2 = cpu()
        with scope() as session:
            pending: Pending[int] = Pending()
            anchors = m.step_into(ps.samples, partial(
                resolve, session=session, node_id=node_id, ids=ids), pending, ids)
            write_metered(session=session, node_id=node_id, metered=pending.metered())
        m.advance_to(anchors)
        c3 = cpu()
        other = [dataclasses.replace(s, node="bench-db") for s in ps.samples]
        with scope() as session:
            record_samples(session=session, node="bench-db", samples=other)
        c5 = cpu()
        with scope() as session:
            meter(session=session, node="bench-db")
        c6 = cpu()
        render(Snapshot(node="bench", groups=dict(sampler.latest), limits={}, costs={},
                        pressure_warnings={}, health=Health(
                            pass_duration=c1 - c0, last_success=time.time(),
                            groups_sampled=len(ps.samples), placements={}, reloads={},
                            drift={}, enforce_write_errors=0, db_write_errors=0,
                            spool_depth=0, alerts={})))
        c4 = cpu()
        if p == 1:   # as the daemon after its start: the heap frozen, the threshold set
            gc.collect()
            gc.freeze()
            gc.set_threshold(args.gc_young, *gc.get_threshold()[1:])
            gc.callbacks.append(gct)
        if p >= 2:
            for k, v in (("sample", c1 - c0), ("record", c2 - c1), ("meter", c3 - c2),
                         ("render", c4 - c6), ("pass", c3 - c0 + c4 - c6),
                         ("meter_db", c6 - c5)):
                times.setdefault(k, []).append(v)
        time.sleep(1.05)  # samples one second apart (timestamps are the store's keys)
    n = len(ps.samples)
    print(f"daemon pass on the host: {n} groups ({args.groups} + tenants), "
          f"{args.passes} passes, CPU ms")
    for k, v in times.items():
        v.sort()
        print(f"  {k:<7} min {v[0] * 1e3:8.1f}  median {v[len(v) // 2] * 1e3:8.1f}  "
              f"max {v[-1] * 1e3:8.1f}  per group {v[len(v) // 2] / n * 1e6:7.1f} us")
    print(f"  gc      {gct.count / args.passes:.1f} collections a pass, "
          f"{gct.seconds / args.passes * 1e3:.2f} ms a pass (first threshold {args.gc_young})")
    sampler.close()
    fs.close()
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
