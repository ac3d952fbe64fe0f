"""Helpers of the benchmarks that run ``governor run`` as a child (soak, daemon_cost)."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

TCK = os.sysconf("SC_CLK_TCK")


def usage(pid: int) -> tuple[float, int]:
    """(CPU seconds of the whole process, all threads; RSS in KiB) from /proc."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return (int(f[11]) + int(f[12])) / TCK, rss


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], bool], timeout: float, what: str, step: float = 0.2) -> None:
    """Poll ``cond`` until true; past ``timeout`` the benchmark ends saying what it awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(step)
    name = Path(sys.argv[0]).stem
    raise SystemExit(f"{name}: timed out after {timeout:.0f} s waiting for {what}")
