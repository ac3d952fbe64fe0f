"""The systemd sandbox guest itself, checked from inside it (`governor sandbox exec --systemd`).

systemd is PID 1 on a pure cgroup v2 hierarchy with D-Bus and journald up; the command (this
pytest) runs as ``governor-sandbox.service``; transient units started over D-Bus land where
systemd's naming says; ``/etc/systemd/system`` takes new units.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from governor.sandbox.detect import in_sandbox, sandbox_env

pytestmark = pytest.mark.systemd

CGROUP = Path("/sys/fs/cgroup")


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=120)


def wait_for(what: str, probe: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


def test_pid1_is_systemd_and_the_sandbox_is_detected() -> None:
    assert Path("/proc/1/comm").read_text().strip() == "systemd"
    assert Path("/run/systemd/system").is_dir()
    # governor.sandbox.detect holds in this guest as in the bare one
    assert sandbox_env()
    assert in_sandbox()
    assert os.getuid() == 0


def test_the_system_is_running() -> None:
    state = run("systemctl", "is-system-running", check=False).stdout.strip()
    failed = run("systemctl", "--failed", "--no-legend", "--no-pager", check=False).stdout
    assert state == "running", f"is-system-running: {state}; failed units:\n{failed}"


def test_the_command_runs_as_the_sandbox_service() -> None:
    assert Path("/proc/self/cgroup").read_text().strip() == (
        "0::/system.slice/governor-sandbox.service"
    )
    shown = run(
        "systemctl", "show", "--property=ActiveState,Delegate", "governor-sandbox.service"
    ).stdout
    props = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    assert props == {"ActiveState": "active", "Delegate": "yes"}
    # the environment is the bare mode's, not systemd's service environment
    assert "INVOCATION_ID" not in os.environ
    assert os.environ["LANG"] == "C.UTF-8"


def test_journald_and_the_system_bus_are_up() -> None:
    active = run(
        "systemctl", "is-active", "systemd-journald.service", "dbus.service", "dbus.socket"
    ).stdout.split()
    assert active == ["active", "active", "active"]
    names = run("busctl", "--system", "--no-pager", "--no-legend", "list").stdout
    assert "org.freedesktop.systemd1" in names
    version = run(
        "busctl", "get-property", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager", "Version",
    ).stdout
    assert version.startswith("s ")
    tag = f"gtest-{secrets.token_hex(3)}"
    subprocess.run(["systemd-cat", "-t", tag, "echo", "hello journal"], check=True, timeout=60)
    seen: list[str] = []

    def logged() -> bool:
        seen[:] = run("journalctl", "-q", "-o", "cat", "-t", tag, check=False).stdout.split("\n")
        return "hello journal" in seen

    wait_for("the journal to hold the message", logged)


def test_the_cgroup2_root_has_the_controllers_governor_needs() -> None:
    mounts = [m.split() for m in Path("/proc/mounts").read_text().splitlines()]
    assert [m[2] for m in mounts if m[1] == "/sys/fs/cgroup"] == ["cgroup2"]
    assert not [m for m in mounts if m[2] == "cgroup"]  # no v1 hierarchy: pure v2
    controllers = (CGROUP / "cgroup.controllers").read_text().split()
    assert {"cpu", "io", "memory", "pids"} <= set(controllers)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "600"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_transient_scope_started_over_dbus_lands_in_its_slice(
    sleeper: subprocess.Popen[bytes],
) -> None:
    token = secrets.token_hex(3)
    slice_ = f"gtest-{token}.slice"
    scope = f"gtest-{token}-{sleeper.pid}.scope"
    # a dash in a slice name nests it: gtest-<token>.slice lives in gtest.slice
    expected = f"/gtest.slice/{slice_}/{scope}"
    r = run(
        "busctl", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
        "org.freedesktop.systemd1.Manager", "StartTransientUnit", "ssa(sv)a(sa(sv))",
        scope, "fail", "3",
        "PIDs", "au", "1", str(sleeper.pid),
        "Slice", "s", slice_,
        "MemoryMax", "t", str(64 * 1024 * 1024),
        "0",
    )
    assert r.stdout.startswith("o "), r.stdout  # the job's object path
    try:
        proc_cgroup = Path(f"/proc/{sleeper.pid}/cgroup")
        wait_for(
            f"pid {sleeper.pid} to move to {expected}",
            lambda: proc_cgroup.read_text().strip() == f"0::{expected}",
        )
        assert (CGROUP / expected.lstrip("/") / "memory.max").read_text().strip() == str(
            64 * 1024 * 1024
        )
        assert run("systemctl", "show", "-P", "ControlGroup", scope).stdout.strip() == expected
        assert run("systemctl", "show", "-P", "MemoryMax", scope).stdout.strip() == str(
            64 * 1024 * 1024
        )
    finally:
        run("systemctl", "stop", scope, slice_, check=False)


@pytest.fixture
def unit_name() -> Iterator[str]:
    name = f"gtest-{secrets.token_hex(3)}.service"
    yield name
    run("systemctl", "stop", name, check=False)
    Path("/etc/systemd/system", name).unlink(missing_ok=True)
    run("systemctl", "daemon-reload", check=False)


def test_units_can_be_installed_in_etc_systemd_system(unit_name: str) -> None:
    marker = Path("/run") / f"{unit_name}.ran"
    unit = Path("/etc/systemd/system") / unit_name
    unit.write_text(
        "[Unit]\n"
        "Description=governor test unit\n"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        f"ExecStart=/bin/sh -c 'cat /proc/self/cgroup > {marker}'\n"
    )
    run("systemctl", "daemon-reload")
    assert run("systemctl", "show", "-P", "LoadState", unit_name).stdout.strip() == "loaded"
    run("systemctl", "start", unit_name)
    assert run("systemctl", "is-active", unit_name).stdout.strip() == "active"
    assert marker.read_text().strip() == f"0::/system.slice/{unit_name}"
    marker.unlink()
