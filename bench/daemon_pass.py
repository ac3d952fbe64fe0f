"""The parts of one daemon sampling pass on the host, per stage, at N groups.

Run: ``.venv/bin/python bench/daemon_pass.py [--groups 1000] [--passes 8]``.

A fake cgroup tree (tmpfs files holding real 6.1 kernel output, ``tests/unit/cgroupfs_fake``)
of N groups in tenants of 100 and an SQLite store; each pass runs what ``Daemon.sample``
runs, stage by stage: ``Sampler.sample()`` (read and parse), ``record_samples`` (raw rows),
``meter`` (interval usage, hourly rollups, anchors) and ``render`` (the exposition).  The
CPU time of each stage is printed (min and median over the passes after two warm-ups), so
a stage that grows out of proportion shows at once.  The real-kernel figures of the whole
daemon are ``bench/run daemon_cost``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from governor.cgroupfs.files import CgroupFS
from governor.exporter.render import Health, Snapshot, render
from governor.metering.sampler import Sampler
from governor.store.db import make_engine, scope_factory, upgrade
from governor.store.service import meter, record_samples
from tests.unit.cgroupfs_fake import create_groups


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--passes", type=int, default=8)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="governor-pass-"))
    create_groups(tmp / "cg" / "gov", args.groups)
    url = f"sqlite:///{tmp}/governor.db"
    upgrade(url)
    engine = make_engine(url)
    scope = scope_factory(engine)
    fs = CgroupFS(tmp / "cg", verify=False)
    sampler = Sampler(fs, "gov", "bench")
    times: dict[str, list[float]] = {}
    for p in range(args.passes + 2):
        c0 = cpu()
        ps = sampler.sample()
        c1 = cpu()
        with scope() as session:
            record_samples(session=session, node="bench", samples=ps.samples)
        c2 = cpu()
        with scope() as session:
            meter(session=session, node="bench")
        c3 = cpu()
        render(Snapshot(node="bench", groups=dict(sampler.latest), limits={}, costs={},
                        pressure_warnings={}, health=Health(
                            pass_duration=c1 - c0, last_success=time.time(),
                            groups_sampled=len(ps.samples), placements={}, reloads={},
                            drift={}, enforce_write_errors=0, db_write_errors=0,
                            spool_depth=0, alerts={})))
        c4 = cpu()
        if p >= 2:
            for k, v in (("sample", c1 - c0), ("record", c2 - c1), ("meter", c3 - c2),
                         ("render", c4 - c3), ("pass", c4 - c0)):
                times.setdefault(k, []).append(v)
        time.sleep(1.05)  # samples one second apart (timestamps are the store's keys)
    n = len(ps.samples)
    print(f"daemon pass on the host: {n} groups ({args.groups} + tenants), "
          f"{args.passes} passes, CPU ms")
    for k, v in times.items():
        v.sort()
        print(f"  {k:<7} min {v[0] * 1e3:8.1f}  median {v[len(v) // 2] * 1e3:8.1f}  "
              f"per group {v[len(v) // 2] / n * 1e6:7.1f} us")
    sampler.close()
    fs.close()
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
