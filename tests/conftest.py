"""Suite-wide test plumbing: the ``kernel`` and ``systemd`` markers, the real-cgroup fixtures.

``kernel`` tests need a real cgroup v2 kernel.  They run only inside the sandbox guest
(``governor sandbox exec``, which ``scripts/test.sh`` uses to run them all in one boot);
anywhere else they are skipped with the reason.  Inside the guest with ``CI=true`` or
``GOVERNOR_STRICT_KERNEL=1`` a skipped kernel test is a failure: CI must not go green by
skipping what it was meant to check.

The host's own ``/sys/fs/cgroup`` is never written: :func:`cgroup2_mount` checks both the
sandbox marker and the cgroup2 superblock magic before handing the path out.

``systemd`` tests need systemd as PID 1 (D-Bus, transient units, slices): they run only
inside ``governor sandbox exec --systemd`` (``/run/systemd/system`` is a directory and
``/proc/1/comm`` is ``systemd``), anywhere else, the bare sandbox included, they are skipped
with the reason; the same strict rule applies to them.  A test may carry both markers;
``scripts/test.sh`` runs ``-m "kernel and not systemd"`` in the bare boot and ``-m systemd``
in one ``--systemd`` boot.  In the systemd guest, systemd owns the cgroup tree: write
cgroup files only in a delegated unit (the command's own ``governor-sandbox.service`` has
``Delegate=yes``) and use transient units or unit properties for the rest.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import time
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from governor.sandbox.detect import CGROUP_ROOT, in_sandbox, is_cgroup2_mount, sandbox_env

SKIP_REASON = (
    "needs a real cgroup v2 kernel: run inside `governor sandbox exec` (scripts/test.sh does)"
)
SYSTEMD_SKIP_REASON = "needs systemd as PID 1: runs inside `governor sandbox exec --systemd`"
#: the markers whose skips are failures inside the sandbox under CI/GOVERNOR_STRICT_KERNEL
STRICT_MARKERS = ("systemd", "kernel")
#: controllers the scratch subtree enables (the ones governor drives)
SCRATCH_CONTROLLERS = ("cpu", "io", "memory", "pids")


def strict_kernel() -> bool:
    """Skipped kernel tests fail: inside the sandbox under CI or GOVERNOR_STRICT_KERNEL=1."""
    return sandbox_env() and (
        os.environ.get("CI", "").lower() == "true"
        or os.environ.get("GOVERNOR_STRICT_KERNEL") == "1"
    )


def systemd_is_pid1() -> bool:
    """systemd runs as PID 1 here (the test ``sd_booted()`` makes, plus PID 1's name)."""
    try:
        comm = Path("/proc/1/comm").read_text().strip()
    except OSError:
        return False
    return comm == "systemd" and Path("/run/systemd/system").is_dir()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kernel_ok = in_sandbox()
    systemd_ok = kernel_ok and systemd_is_pid1()
    if kernel_ok and systemd_ok:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    skip_systemd = pytest.mark.skip(reason=SYSTEMD_SKIP_REASON)
    for item in items:
        if not systemd_ok and item.get_closest_marker("systemd") is not None:
            item.add_marker(skip_systemd)
        elif not kernel_ok and item.get_closest_marker("kernel") is not None:
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if not report.skipped or hasattr(report, "wasxfail"):
        return report
    kind = next((m for m in STRICT_MARKERS if item.get_closest_marker(m) is not None), None)
    if kind is not None and strict_kernel():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (
            f"{kind} test skipped inside the sandbox under CI/GOVERNOR_STRICT_KERNEL "
            f"(a skip here is a failure): {reason}"
        )
    return report


@pytest.fixture(scope="session")
def cgroup2_mount() -> Path:
    """``/sys/fs/cgroup``, only after checking it is the sandbox's cgroup2 hierarchy."""
    if not sandbox_env():
        pytest.skip(SKIP_REASON + " (GOVERNOR_SANDBOX is not 1)")
    if not is_cgroup2_mount(CGROUP_ROOT):
        pytest.skip(SKIP_REASON + f" ({CGROUP_ROOT} is not a cgroup2 mount)")
    return CGROUP_ROOT


def _write(path: Path, value: str) -> None:
    with path.open("w") as f:
        f.write(value)


def _enable_controllers(root: Path, controllers: tuple[str, ...]) -> None:
    available = set((root / "cgroup.controllers").read_text().split())
    missing = [c for c in controllers if c not in available]
    if missing:
        pytest.fail(f"controllers {missing} not available in {root}/cgroup.controllers")
    enabled = set((root / "cgroup.subtree_control").read_text().split())
    todo = [c for c in controllers if c not in enabled]
    if todo:
        _write(root / "cgroup.subtree_control", " ".join(f"+{c}" for c in todo))


def _groups_bottom_up(top: Path) -> Iterator[Path]:
    for dirpath, _dirnames, _files in os.walk(top, topdown=False):
        yield Path(dirpath)


def remove_subtree(top: Path, timeout: float = 10.0) -> None:
    """Kill every process under ``top`` (cgroup.kill), then rmdir its groups bottom-up."""
    if not top.exists():
        return
    with contextlib.suppress(FileNotFoundError):
        _write(top / "cgroup.kill", "1")
    deadline = time.monotonic() + timeout
    while True:
        try:
            populated = "populated 1" in (top / "cgroup.events").read_text()
        except FileNotFoundError:
            return
        if not populated or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    for group in _groups_bottom_up(top):
        while True:
            try:
                group.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)


@pytest.fixture
def scratch_subtree(cgroup2_mount: Path) -> Iterator[Path]:
    """A fresh ``/sys/fs/cgroup/gtest-<random>`` with cpu, io, memory, pids enabled above it.

    Teardown kills whatever is left in it and removes it with all its children.
    """
    _enable_controllers(cgroup2_mount, SCRATCH_CONTROLLERS)
    top = cgroup2_mount / f"gtest-{secrets.token_hex(4)}"
    top.mkdir()
    try:
        yield top
    finally:
        remove_subtree(top)
