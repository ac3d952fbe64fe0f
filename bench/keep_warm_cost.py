"""What keep_warm costs: CPU time per no-op migration of the C accelerator's writer thread.

``.venv/bin/python bench/keep_warm_cost.py [--seconds 10] [--interval-ms 4]`` on the host:
the thread (``_keepwarm.warm_*``, as the daemon runs it) writes its tid every interval to a
regular file, which costs its wake-up and a write(2) but no cgroup work.  Inside the sandbox
(``governor sandbox exec -- .venv/bin/python bench/keep_warm_cost.py``) it also writes to
the ``cgroup.threads`` of the cgroup it is in, as the daemon does: the kernel's part of a
no-op migration (the threadgroup rwsem taken for writing) is the difference.  Prints the
process CPU time per write and per second of open window.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from governor.cgroupfs.tree import own_cgroup


def measure(path: str, seconds: float, interval: float) -> tuple[int, float]:
    from governor.cgroupfs import _keepwarm as c

    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        c.warm_start(fd, int(interval * 1e9))
    finally:
        os.close(fd)
    w0, e0 = c.warm_stats()[:2]
    t0 = time.process_time()  # the main thread sleeps: this is the writer's CPU
    c.warm_until(time.monotonic_ns() + int(seconds * 1e9))
    time.sleep(seconds + 0.05)
    cpu = time.process_time() - t0
    writes, errors, err, _tid = c.warm_stats()
    if errors != e0:
        raise SystemExit(f"keep_warm_cost: writes to {path} refused: {os.strerror(err)}")
    return writes - w0, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--interval-ms", type=float, default=4.0)
    args = ap.parse_args()
    try:
        from governor.cgroupfs import _keepwarm  # noqa: F401
    except ImportError:
        print("keep_warm_cost: the C accelerator is not built (pip install -e .)",
              file=sys.stderr)
        return 2
    interval = args.interval_ms / 1e3
    targets: list[tuple[str, str]] = []
    with tempfile.NamedTemporaryFile(prefix="keep-warm-") as f:
        targets.append(("regular file", f.name))
        if os.environ.get("GOVERNOR_SANDBOX") == "1":
            own = own_cgroup()
            targets.append((f"/{own} cgroup.threads",
                            str(Path("/sys/fs/cgroup") / own / "cgroup.threads")))
        print(f"interval {args.interval_ms:g} ms, {args.seconds:g} s each")
        for label, path in targets:
            writes, cpu = measure(path, args.seconds, interval)
            print(f"{label:<28} {writes:>6} writes  {cpu * 1e3:8.1f} ms CPU  "
                  f"{cpu / max(writes, 1) * 1e6:7.1f} us per write  "
                  f"{cpu / args.seconds * 100:5.2f}% of a CPU while the window is open")
    from governor.cgroupfs import _keepwarm as c

    c.warm_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
