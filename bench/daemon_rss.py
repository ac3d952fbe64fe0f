"""What ``governor run`` holds in memory on the host: its imports, then N groups' state.

Run: ``.venv/bin/python bench/daemon_rss.py [--groups 1000] [--passes 8] [--trace 15]``
(from the repository, or with ``PYTHONPATH`` at a worktree).  Each figure is a fresh
process's, so compare two commits with the same command on the same machine.

First every module ``governor run`` imports: the command line (``governor.cli`` and the
``run`` command's module, as ``governor run`` loads them) and each module
``governor/daemon/`` imports anywhere, at its top or inside a function (read from its
sources, so the list follows the daemon).  VmRSS and VmHWM are printed then, with the
number of modules and the heaviest packages among them.

Then the daemon's state for N groups, as ``bench/daemon_pass.py`` builds it: a fake
cgroup tree (``tests/unit/cgroupfs_fake``) of N groups in tenants of 100, an SQLite store
behind the daemon's :class:`~governor.store.gate.Database`, its ``Sampler``, its
``SpoolingWriter``, the in-memory ``Meter`` with its ``Pending`` steps written every
``write_every`` passes, and the exposition rendered each pass; after the second pass the
heap is settled as the daemon settles it (``settle_heap``).  VmRSS and VmHWM are printed
after the passes, and again after ``trim_heap`` (which the daemon runs every 30 passes).
The figures of the whole daemon in a VM are ``bench/run daemon_cost``.

``--trace N``: tracemalloc's N largest allocation sites (by file) alive after the passes,
traced from the start of the passes (tracing costs memory and time: the RSS figures of a
traced run are not comparable, read them from a run without it).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def status() -> dict[str, float]:
    """VmRSS and VmHWM of this process, MiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1]) / 1024
    return out


def show(label: str) -> None:
    s = status()
    print(f"{label:<28} VmRSS {s['VmRSS']:6.1f} MiB  VmHWM {s['VmHWM']:6.1f} MiB  "
          f"(anon {s['RssAnon']:5.1f}, file {s['RssFile']:5.1f})", flush=True)


def daemon_imports() -> list[str]:
    """Every module governor/daemon/ imports (top level and inside functions)."""
    names: list[str] = []
    for node in (n for p in sorted((ROOT / "governor" / "daemon").glob("*.py"))
                 for n in ast.walk(ast.parse(p.read_text()))):
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "__future__":
                continue
            names.append(node.module)
            for a in node.names:   # `from governor.cgroupfs import mount`: a module too
                sub = f"{node.module}.{a.name}"
                try:
                    if importlib.util.find_spec(sub) is not None:
                        names.append(sub)
                except (ImportError, ValueError):
                    pass
    return sorted(set(names))


def import_like_run() -> None:
    """The imports of ``governor run``: the command line, the run command, the daemon."""
    from governor.cli import _load, main_group

    _load(main_group, "run")
    from governor.log import setup_logging  # noqa: F401  (the run command sets it up)

    for name in daemon_imports():
        importlib.import_module(name)


def heaviest(n: int = 8) -> str:
    top: Counter[str] = Counter()
    for name in list(sys.modules):
        parts = name.split(".")
        top[".".join(parts[:2]) if parts[0] in ("governor", "sqlalchemy") else parts[0]] += 1
    return ", ".join(f"{k} {v}" for k, v in top.most_common(n))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--passes", type=int, default=8)
    ap.add_argument("--write-every", type=int, default=6,
                    help="meter steps written every this many passes (the daemon's default)")
    ap.add_argument("--trace", type=int, default=0, metavar="N",
                    help="print tracemalloc's N largest sites alive after the passes")
    args = ap.parse_args()
    show("start (interpreter)")
    t0 = time.perf_counter()
    import_like_run()
    took = time.perf_counter() - t0
    show("after the daemon's imports")
    print(f"  {len(sys.modules)} modules in {took:.2f} s; most: {heaviest()}")
    print(f"  sqlalchemy.orm loaded: {'sqlalchemy.orm' in sys.modules}; "
          f"asyncio: {'asyncio' in sys.modules}; "
          f"importlib.metadata: {'importlib.metadata' in sys.modules}")

    from governor.cgroupfs.files import CgroupFS
    from governor.cgroupfs.reader import raise_nofile_limit
    from governor.daemon import settle_heap, trim_heap
    from governor.exporter.render import Health, Snapshot, render
    from governor.metering.catchup import load_anchors
    from governor.metering.meter import Meter, Pending
    from governor.metering.sampler import Sampler
    from governor.store.gate import Database
    from governor.store.metered import write_metered
    from governor.store.spool import Spool, SpoolingWriter
    from tests.unit.cgroupfs_fake import create_groups

    raise_nofile_limit()
    tmp = Path(tempfile.mkdtemp(prefix="governor-rss-"))
    create_groups(tmp / "cg" / "gov", args.groups)
    url = f"sqlite:///{tmp}/governor.db"
    # `governor db upgrade`: another process (alembic never loads in the daemon)
    subprocess.run([sys.executable, "-c", "import sys; from governor.store.db import upgrade; "
                    "upgrade(sys.argv[1])", url], check=True, env={
                        **os.environ, "PYTHONPATH": os.pathsep.join(
                            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])})
    show("store created")
    if args.trace:
        import tracemalloc
        tracemalloc.start(1)
    db = Database(url)
    assert db.check(), db.problem
    fs = CgroupFS(tmp / "cg", verify=False)
    sampler = Sampler(fs, "gov", "bench")
    spool = Spool(tmp / "state.spool", max_samples=1_000_000)
    writer = SpoolingWriter(spool=spool, session_scope=db.scope)
    meter, pending = Meter(), Pending[int]()
    ready = False
    for p in range(args.passes):
        ps = sampler.sample()
        with writer.lock:
            outcome = writer.submit("bench", ps.samples)
            assert outcome == "stored", outcome
            if not ready:   # the daemon's first pass meters from the store's rows
                from governor.metering.catchup import meter as store_meter
                with db.scope() as session:
                    store_meter(session=session, node="bench")
                meter.forget()
                ready = True
            else:
                def resolve(unknown: list[Any]) -> Any:
                    with db.scope() as session:
                        return load_anchors(session=session, node="bench",
                                            node_id=writer.node_id, samples=unknown,
                                            ids=writer.ids)

                anchors = meter.step_into(ps.samples, resolve, pending, writer.ids)
                if pending.passes >= args.write_every:
                    with db.scope() as session:
                        write_metered(session=session, node_id=writer.node_id,
                                      metered=pending.metered())
                    pending.clear()
                meter.advance_to(anchors)
        render(Snapshot(node="bench", groups=dict(sampler.latest),
                        samples={s.path: s for s in ps.samples}, limits={}, costs={},
                        pressure_warnings={}, health=Health(
                            pass_duration=ps.duration, last_success=time.time(),
                            groups_sampled=len(ps.samples), placements={}, reloads={},
                            drift={}, enforce_write_errors=0, db_write_errors=0,
                            spool_depth=0, alerts={})))
        if p == 1:
            settle_heap()   # as the daemon after its first pass
        time.sleep(1.05)   # samples one second apart (timestamps are the store's keys)
    show(f"after {args.passes} passes ({len(ps.samples)} groups)")
    trim_heap()
    show("after trim_heap")
    if args.trace:
        import tracemalloc
        snap = tracemalloc.take_snapshot()
        by: Counter[str] = Counter()
        for st in snap.statistics("filename"):
            f = st.traceback[0].filename
            by[f.split("site-packages/")[-1].split("/lib/python3")[-1]] += st.size
        print(f"tracemalloc, alive after the passes (top {args.trace} files):")
        for f, size in by.most_common(args.trace):
            print(f"  {size / 2**20:7.2f} MiB  {f}")
        print(f"tracemalloc, alive after the passes (top {args.trace} lines):")
        for st in snap.statistics("lineno")[:args.trace]:
            frame = st.traceback[0]
            print(f"  {st.size / 2**20:7.2f} MiB  {st.count:8d} blocks  "
                  f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}")
    sampler.close()
    fs.close()
    db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
