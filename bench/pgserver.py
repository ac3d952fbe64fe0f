"""A PostgreSQL for a benchmark, and the CPU it and the host spend: bench/fleet_capacity.py's
helpers."""

from __future__ import annotations

import math
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text

from governor.store.db import make_engine
from tests.helpers.db import throwaway_database

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def server(url: str | None, max_connections: int) -> Iterator[str]:
    """A URL of a fresh scratch database: on ``url``'s server, or on a private server
    started (and stopped) with scripts/pg-test-server.sh."""
    started = None
    if url is None:
        env = {**os.environ, "PG_TEST_DIR": f"/tmp/governor-pg-capacity-{os.getpid()}",
               "PGPORT": os.environ.get("PGPORT_CAPACITY", "5447"),
               "PG_MAX_CONNECTIONS": str(max_connections)}
        out = subprocess.run([str(ROOT / "scripts/pg-test-server.sh"), "start"], env=env,
                             check=True, capture_output=True, text=True).stdout
        url = out.strip().split("=", 1)[1]
        started = env
    try:
        with throwaway_database(url, prefix="gov_capacity") as db:
            yield db
    finally:
        if started is not None:
            subprocess.run([str(ROOT / "scripts/pg-test-server.sh"), "stop"], env=started,
                           check=False, capture_output=True)


def host_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole host, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [float(v) for v in f.readline().split()[1:]]
    idle = vals[3] + vals[4]
    return sum(vals) - idle, sum(vals)


def server_cpu(postmaster: int | None) -> float:
    """CPU seconds of a local PostgreSQL server so far: the postmaster's, its live
    children's (backends, background workers) and the exited children's it reaped; 0
    when the server is not on this host."""
    if postmaster is None:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")

    def fields(pid: int | str) -> list[str]:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()

    total = 0.0
    try:
        own = fields(postmaster)
    except OSError:
        return 0.0
    total += sum(int(x) for x in own[11:15]) / tick   # utime stime cutime cstime
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            f = fields(pid)
        except OSError:
            continue
        if int(f[1]) == postmaster:
            total += (int(f[11]) + int(f[12])) / tick
    return total


def postmaster_of(url: str) -> int | None:
    """The pid of ``url``'s postmaster when the server runs on this host, else None."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            backend = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            addr = conn.execute(text("SELECT inet_server_addr()")).scalar_one()
        with open(f"/proc/{backend}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{ppid}/comm") as f:
            local = f.read().strip() in ("postgres", "postmaster")
        return ppid if local and (addr is None or str(addr).startswith("127.")) else None
    except OSError:
        return None
    finally:
        engine.dispose()


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(q / 100 * len(v)) - 1))]


