"""The first-wave controller modules' declarations against a real cgroup v2 kernel (runs
inside the sandbox VM): the kernel defaults they declare are what a new group holds, and
the files they read on every pass are there and read as values."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.managed import MANAGED_CONTROLLERS
from governor.cgroupfs.reader import StatReader
from governor.cgroupfs.tree import create
from governor.controllers import registry
from governor.errors import CgroupError

pytestmark = pytest.mark.kernel


@pytest.fixture
def fs(scratch_subtree: Path) -> Iterator[CgroupFS]:
    with CgroupFS(scratch_subtree) as f:
        yield f


def test_declared_kernel_defaults_are_a_new_groups(fs: CgroupFS, cgroup2_mount: Path) -> None:
    """Every controller module's ``defaults`` (what a key that left the policy is reset
    to) is the text the kernel gives the file in a group just made."""
    # the registered controllers this kernel offers, enabled (cpuset is not a managed one:
    # the plan enables it where a policy names its keys)
    offered = set((cgroup2_mount / "cgroup.controllers").read_text().split())
    wanted = {c.name for c in registry.CONTROLLERS} & offered
    assert {"cpu", "memory", "io", "pids", "cpuset"} <= wanted
    for extra in sorted(wanted - set(MANAGED_CONTROLLERS)):  # the mount root hands them down
        (cgroup2_mount / "cgroup.subtree_control").write_text(f"+{extra}")
    create(fs, "acme/web", tuple(sorted(wanted | set(MANAGED_CONTROLLERS))))
    got: dict[str, str | None] = {}
    for file in registry.kernel_defaults():
        try:
            got[file] = fs.read("acme/web", file).strip()
        except CgroupError:
            got[file] = None
    assert got == registry.kernel_defaults()


def test_declared_pass_files_are_read_on_a_new_group(fs: CgroupFS) -> None:
    """Every first-wave ``pass_files`` entry exists in a group with the managed controllers
    enabled, and the reader gives a value for each."""
    create(fs, "acme/web", MANAGED_CONTROLLERS)
    for file in registry.pass_files():
        # every one exists; io.stat is empty while the group has done no IO
        assert fs.read("acme/web", file) or file == "io.stat", file
    with StatReader(fs) as r:
        s = r.read("acme/web")
    assert s.cpu is not None and "usage_usec" in s.cpu
    assert None not in (s.memory_current, s.memory_peak, s.swap_current, s.memory_events,
                        s.io, s.pids_current)
    assert set(s.psi) == {"cpu", "memory", "io"}
