"""governor.systemd.bus against a real systemd (PID 1 in `governor sandbox exec --systemd`).

Transient slices, scopes and a service are created through D-Bus and checked where systemd puts
them: the cgroup files under /sys/fs/cgroup, ``systemctl show`` and /proc/PID/cgroup.  The tests
of this module share one slice and one scope and run in file order.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from governor.systemd.bus import (
    NoSuchUnit,
    Property,
    Systemd,
    SystemdError,
    UnitExists,
    sd_booted,
)

pytestmark = pytest.mark.systemd

SLICE = "govtest-a.slice"
SLICE_CG = "/govtest.slice/govtest-a.slice"
SLICE_DIR = Path("/sys/fs/cgroup" + SLICE_CG)
SCOPE = "govtest-s1.scope"
SCOPE_CG = f"{SLICE_CG}/{SCOPE}"
SERVICE = "govtest-fail.service"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def sd() -> Iterator[Systemd]:
    assert sd_booted()
    client = Systemd(timeout=120.0)  # TCG guest: everything is slow
    yield client
    for unit in (SCOPE, SERVICE, SLICE):
        with contextlib.suppress(SystemdError):  # best-effort clean-up of a throw-away guest
            client.stop_unit(unit)
    client.close()


@pytest.fixture(scope="module")
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def _sleeper(procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(["sleep", "600"])
    procs.append(p)
    return p


def _cgroup_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cgroup").read_text().strip()


def _read(name: str) -> str:
    return (SLICE_DIR / name).read_text().strip()


def _show(unit: str, prop: str) -> str:
    return subprocess.run(
        ["systemctl", "show", "-P", prop, unit], capture_output=True, text=True, check=True
    ).stdout.strip()


def _wait_state(sd: Systemd, unit: str, state: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while (now := sd.unit_active_state(unit)) != state:
        assert time.monotonic() < deadline, f"{unit} stayed {now}, never {state}"
        time.sleep(0.2)


def test_version(sd: Systemd) -> None:
    assert sd.version() >= 252


def test_not_loaded_units(sd: Systemd) -> None:
    assert sd.unit_active_state("govtest-nothere.scope") is None
    assert sd.control_group("govtest-nothere.slice") is None
    with pytest.raises(NoSuchUnit) as info:
        sd.stop_unit("govtest-nothere.scope")
    assert "govtest-nothere.scope" in str(info.value)


def test_start_slice(sd: Systemd) -> None:
    props: list[Property] = [
        ("Description", ("s", "governor test slice")),
        ("MemoryAccounting", ("b", True)),
        ("MemoryMax", ("t", 64 * MiB)),
        ("CPUAccounting", ("b", True)),
        ("CPUWeight", ("t", 50)),
        ("TasksAccounting", ("b", True)),
        ("TasksMax", ("t", 100)),
    ]
    sd.start_transient_unit(SLICE, props)
    assert sd.unit_active_state(SLICE) == "active"
    assert sd.control_group(SLICE) == SLICE_CG
    assert _read("memory.max") == str(64 * MiB)
    assert _read("cpu.weight") == "50"
    assert _read("pids.max") == "100"
    assert _show(SLICE, "MemoryMax") == str(64 * MiB)
    assert sd.unit_property(SLICE, "org.freedesktop.systemd1.Slice", "MemoryMax") == 64 * MiB
    assert sd.unit_property(SLICE, "org.freedesktop.systemd1.Unit", "Id") == SLICE


def test_set_properties_survive_daemon_reload(sd: Systemd) -> None:
    sd.set_unit_properties(
        SLICE, [("MemoryMax", ("t", 128 * MiB)), ("CPUWeight", ("t", 200))]
    )
    assert _read("memory.max") == str(128 * MiB)
    assert _read("cpu.weight") == "200"
    subprocess.run(["systemctl", "daemon-reload"], check=True, timeout=300)
    assert _show(SLICE, "MemoryMax") == str(128 * MiB)
    assert _show(SLICE, "CPUWeight") == "200"
    assert _read("memory.max") == str(128 * MiB)
    assert sd.unit_property(SLICE, "org.freedesktop.systemd1.Slice", "CPUWeight") == 200


def test_scope_attach_and_unit_by_pid(
    sd: Systemd, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    first = _sleeper(sleepers)
    sd.start_transient_unit(
        SCOPE,
        [
            ("Slice", ("s", SLICE)),
            ("Delegate", ("b", True)),
            ("PIDs", ("au", [first.pid])),
        ],
    )
    assert _cgroup_of(first.pid) == f"0::{SCOPE_CG}"
    assert sd.control_group(SCOPE) == SCOPE_CG
    assert sd.unit_by_pid(first.pid) == SCOPE

    second = _sleeper(sleepers)
    assert _cgroup_of(second.pid) != f"0::{SCOPE_CG}"
    sd.attach_processes(SCOPE, [second.pid])
    assert _cgroup_of(second.pid) == f"0::{SCOPE_CG}"
    assert sd.unit_by_pid(second.pid) == SCOPE


def test_unit_exists_for_an_active_scope(
    sd: Systemd, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    third = _sleeper(sleepers)
    with pytest.raises(UnitExists) as info:
        sd.start_transient_unit(SCOPE, [("Slice", ("s", SLICE)), ("PIDs", ("au", [third.pid]))])
    assert info.value.name == "org.freedesktop.systemd1.UnitExists"
    assert SCOPE in str(info.value)
    assert "active" in str(info.value)
    assert sd.unit_active_state(SCOPE) == "active"


def test_failed_leftover_is_reset_and_restarted(sd: Systemd) -> None:
    def service(argv: list[str]) -> list[Property]:
        return [
            ("Slice", ("s", SLICE)),
            ("ExecStart", ("a(sasb)", [(argv[0], argv, False)])),
        ]

    sd.start_transient_unit(SERVICE, service(["/bin/false"]))
    _wait_state(sd, SERVICE, "failed")
    sd.start_transient_unit(SERVICE, service(["/bin/sleep", "600"]))
    assert sd.unit_active_state(SERVICE) == "active"
    assert _show(SERVICE, "ExecMainStatus") == "0"
    sd.stop_unit(SERVICE)
    assert sd.unit_active_state(SERVICE) is None


def test_stop_scope_and_slice(sd: Systemd, sleepers: list[subprocess.Popen[bytes]]) -> None:
    sd.stop_unit(SCOPE)
    for p in sleepers[:2]:
        assert p.wait(timeout=60) != 0  # killed by the scope's stop
    sd.stop_unit(SLICE)
    assert sd.unit_active_state(SLICE) in (None, "inactive")
    assert sd.control_group(SLICE) is None or not SLICE_DIR.exists()
    assert not SLICE_DIR.exists()
