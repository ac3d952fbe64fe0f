"""governor status / top and governor demo on a real cgroup v2 kernel (the sandbox VM).

* ``status --format json`` against a scratch subtree with a CPU burner capped by cpu.max and
  a process holding 48 MiB: its CPU % and memory figures are checked against the kernel's
  own counters read around the command (the usage it reports lies between the test's reads,
  and its rate is the counter delta over its interval, under the cap);
* ``top`` in a real terminal (a pty): the first frame, ``m`` re-sorts by memory, ``q``
  quits with exit 0 and the terminal mode restored;
* ``demo`` from start to end: exit 0, the OOM kill caught, the bill with CPU in it.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel
REPO = Path(__file__).resolve().parents[2]


def usage_usec(g: Path) -> int:
    return int(dict(x.split() for x in (g / "cpu.stat").read_text().splitlines())["usage_usec"])


def in_group(g: Path, argv: list[str]) -> subprocess.Popen[bytes]:
    def pre() -> None:
        (g / "cgroup.procs").write_text(str(os.getpid()))

    return subprocess.Popen(argv, preexec_fn=pre, stdout=subprocess.PIPE)  # noqa: PLW1509


@pytest.fixture
def tenants(scratch_subtree: Path) -> Iterator[Path]:
    s = scratch_subtree
    (s / "cgroup.subtree_control").write_text("+cpu +io +memory +pids")
    for t, groups in (("acme", ("batch", "idle")), ("globex", ("cache",))):
        (s / t).mkdir()
        (s / t / "cgroup.subtree_control").write_text("+cpu +io +memory +pids")
        for g in groups:
            (s / t / g).mkdir()
    (s / "acme/batch/cpu.max").write_text("50000 100000")
    (s / "globex/cache/memory.max").write_text(str(128 << 20))
    (s / "globex/cache/memory.high").write_text(str(96 << 20))
    procs = [in_group(s / "acme/batch", ["sh", "-c", "while :; do :; done"]),
             in_group(s / "globex/cache", [sys.executable, "-c",
                      "import sys,time; b = b'x' * (48 << 20); print('ok', flush=True); "
                      "time.sleep(600)"])]
    assert procs[1].stdout is not None and procs[1].stdout.readline() == b"ok\n"
    try:
        yield s
    finally:
        for p in procs:
            p.kill()
            p.wait()


def governor(*args: str, timeout: float = 300, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "governor", *args], cwd=REPO, text=True,
                          capture_output=True, check=False, timeout=timeout, **kw)  # type: ignore[call-overload]


def test_status_json_matches_the_kernel_counters(tenants: Path) -> None:
    s = tenants
    time.sleep(1.0)  # the burner is running
    before = usage_usec(s / "acme/batch")
    t0 = time.monotonic()
    r = governor("status", "--cgroup-root", "/sys/fs/cgroup", "--subtree", s.name,
                 "--format", "json", "--interval", "3s")
    elapsed = time.monotonic() - t0
    after = usage_usec(s / "acme/batch")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    rows = {g["path"]: g for g in doc["groups"]}
    assert [g["path"] for g in doc["groups"]] == [
        "acme", "acme/batch", "acme/idle", "globex", "globex/cache"]
    b = rows["acme/batch"]
    assert b["state"] == "live" and b["cpu_max_cores"] == 0.5
    # the usage it reports was read between the test's own two reads of the counter
    assert before <= b["cpu_usage_usec"] <= after
    # its rate: at most the whole delta the test saw over the whole command, and capped
    used = b["cpu_percent"] / 100 * b["interval_s"] * 1e6
    assert used <= after - before
    assert 2.9 <= b["interval_s"] <= elapsed
    assert 10.0 <= b["cpu_percent"] <= 50.0 * 1.1, b
    assert rows["acme/idle"]["cpu_percent"] == 0.0
    # the tenant includes its group's CPU (cpu.stat is hierarchical)
    assert rows["acme"]["cpu_percent"] >= b["cpu_percent"] * 0.9
    # memory against the kernel's files
    c = rows["globex/cache"]
    assert c["memory_max_bytes"] == 128 << 20 and c["memory_high_bytes"] == 96 << 20
    assert c["swap_max_bytes"] == "max" and c["pids_max"] == "max" and c["pids_current"] == 1
    now = int((s / "globex/cache/memory.current").read_text())
    assert 48 << 20 <= c["memory_current_bytes"] <= 128 << 20
    assert abs(c["memory_current_bytes"] - now) <= 4 << 20
    assert rows["acme/batch"]["memory_max_bytes"] == "max"
    assert c["oom_kills"] == 0 and c["oom_kills_interval"] == 0
    # a table for people, with the limits shown
    r = governor("status", "--cgroup-root", "/sys/fs/cgroup", "--subtree", s.name,
                 "--sort", "memory", "--interval", "1s", env={**os.environ, "COLUMNS": "160"})
    assert r.returncode == 0, r.stderr
    cache = next(x for x in r.stdout.splitlines() if x.split()[:1] == ["cache"])
    assert "128.0MiB" in cache and "96.0MiB" in cache and "1/∞" in cache


def read_until(fd: int, pattern: str, timeout: float, buf: list[bytes]) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = b"".join(buf).decode(errors="replace")
        if re.search(pattern, text):
            return text
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                buf.append(os.read(fd, 65536))
            except OSError:
                break
    raise AssertionError(f"{pattern!r} not seen in: {b''.join(buf).decode()[-3000:]}")


def test_top_in_a_terminal_sorts_on_keys_and_quits_on_q(tenants: Path) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: governor top on the pty
        os.chdir(REPO)
        os.environ.update(COLUMNS="160", LINES="40", TERM="xterm")
        os.execv(sys.executable, [sys.executable, "-m", "governor", "top", "--cgroup-root",
                                  "/sys/fs/cgroup", "--subtree", tenants.name,
                                  "--interval", "1s"])
    buf: list[bytes] = []
    try:
        text = read_until(fd, r"CPU% ▼[\s\S]*globex", 120, buf)
        assert "sorted by cpu" in text
        # the first frame: acme (with the burner) before globex
        assert text.rindex("acme") < text.rindex("globex")
        os.write(fd, b"m")
        read_until(fd, r"sorted by memory[\s\S]*MEMORY ▼", 30, buf)
        mode = termios.tcgetattr(fd)
        assert not mode[3] & termios.ICANON  # cbreak while top runs
        os.write(fd, b"q")
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.waitstatus_to_exitcode(status) == 0
        assert termios.tcgetattr(fd)[3] & termios.ICANON  # restored on exit
    finally:
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)


def test_demo_runs_the_whole_tour(cgroup2_mount: Path) -> None:
    r = governor("demo", "--budget", "540", timeout=660)
    out = r.stdout
    assert r.returncode == 0, out[-4000:] + r.stderr[-4000:]
    assert out.splitlines()[0].startswith("governor demo: cgroup v2 is usable here")
    for n in range(1, 8):
        assert f"== step {n}:" in out
    m = re.search(r"acme/batch used ([0-9.]+) cores", out)
    assert m is not None and 0.05 <= float(m[1]) <= 0.6
    m = re.search(r"memory.events of globex/cache says oom_kill (\d+)", out)
    assert m is not None and int(m[1]) >= 1
    assert re.search(r'governor_oom_kills_total\{[^}]*group="cache"[^}]*\} [1-9]', out)
    m = re.search(r"billed: acme/batch CPU ([0-9.]+) core-seconds", out)
    assert m is not None and float(m[1]) > 0
    assert "demo finished: all 7 steps passed" in out
    # nothing left behind
    assert not [p for p in cgroup2_mount.iterdir() if p.name.startswith("governor-demo-")]
