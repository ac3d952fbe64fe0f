"""Which cgroup driver governs this host, and the layout it gives the groups.

``[governor] cgroup_driver`` (or ``$GOVERNOR_CGROUP_DRIVER``):

* ``systemd`` (the default when PID 1 is systemd, as kubelet, runc and containerd choose):
  tenants and groups are slices, processes live in scopes, all made and changed over
  D-Bus (:mod:`governor.systemd.driver`).  systemd owns the tree on such a host; this is
  the only way governor's groups show in ``systemctl``, ``systemd-cgls`` and
  ``systemd-cgtop`` and survive ``systemctl daemon-reload``.
* ``cgroupfs`` (the default elsewhere): governor makes and writes the directories itself.
  On a systemd host it refuses to, unless the subtree lies inside a unit delegated to it
  (``Delegate=yes``): systemd may otherwise reset what governor wrote.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING

from governor.cgroupfs.layout import Layout
from governor.cgroupfs.managed import DELEGATE_XATTRS
from governor.errors import ConfigError

if TYPE_CHECKING:
    from governor.cgroupfs.files import CgroupFS
    from governor.config import Config
    from governor.enforce.apply import Executor
    from governor.enforce.plan import Plan
    from governor.systemd.driver import SystemdDriver

#: sd_booted(3): systemd is PID 1 when this is a directory
RUN_SYSTEMD = "/run/systemd/system"


def sd_booted(run_dir: str = RUN_SYSTEMD) -> bool:
    return os.path.isdir(run_dir)


def choose(cfg: Config, *, run_dir: str = RUN_SYSTEMD) -> tuple[str, str]:
    """``(driver, why)``: the configured driver, else systemd when PID 1 is systemd."""
    if cfg.cgroup_driver is not None:
        return cfg.cgroup_driver, (f"cgroup_driver = \"{cfg.cgroup_driver}\" "
                                   f"({cfg.source or 'configuration'})")
    if sd_booted(run_dir):
        return "systemd", (f"PID 1 is systemd ({run_dir} is a directory): the default there, "
                           "as for kubelet, runc and containerd")
    return "cgroupfs", f"PID 1 is not systemd (no {run_dir})"


def layout_for(cfg: Config, *, run_dir: str = RUN_SYSTEMD) -> Layout:
    """The layout of ``cfg``'s subtree under the driver :func:`choose` picks."""
    driver, _ = choose(cfg, run_dir=run_dir)
    if driver == "systemd":
        from governor.systemd.units import SliceLayout, check_subtree

        check_subtree(cfg.subtree, file=cfg.source)
        return SliceLayout(cfg.subtree)
    return Layout(cfg.subtree)


def delegated(fs: CgroupFS, rel: str) -> str | None:
    """The nearest existing cgroup at or above ``rel`` (below the mount's root) that
    systemd delegated (its ``trusted.delegate`` xattr is 1), or None."""
    parts = [p for p in rel.split("/") if p]
    for i in range(len(parts), 0, -1):
        path = "/".join(parts[:i])
        for name in DELEGATE_XATTRS:
            try:
                value = os.getxattr(fs.path(path), name)
            except OSError as e:
                if e.errno in (errno.ENODATA, errno.ENOENT, errno.ENOTSUP, errno.EPERM):
                    continue
                raise
            if value.strip() in (b"1", b"yes", b"true"):
                return path
    return None


def check_cgroupfs_allowed(cfg: Config, fs: CgroupFS, *, run_dir: str = RUN_SYSTEMD) -> None:
    """With the cgroupfs driver on a systemd host, refuse a subtree (or a self_cgroup)
    outside every delegated unit, naming the fix."""
    if not sd_booted(run_dir):
        return
    for key, rel in (("governor.subtree", cfg.subtree), ("governor.self_cgroup",
                                                          cfg.self_cgroup)):
        if delegated(fs, rel) is None:
            raise ConfigError(
                f"{rel!r} is outside every unit systemd delegated, and systemd owns the "
                "cgroup tree on this host (PID 1 is systemd): governor would create groups "
                "that systemd may reset and does not track.  Fix: set cgroup_driver = "
                "\"systemd\" (the default on a systemd host; tenants become slices), or "
                "point the subtree into a unit with Delegate=yes that no tenant must "
                "outlive", file=cfg.source, key=key)


def open_systemd(cfg: Config, fs: CgroupFS, layout: Layout) -> SystemdDriver:
    """The systemd driver for ``layout`` (connects lazily on its first call)."""
    from governor.systemd.bus import Systemd
    from governor.systemd.driver import SystemdDriver
    from governor.systemd.units import SliceLayout

    assert isinstance(layout, SliceLayout)
    return SystemdDriver(layout, Systemd(), fs)


class Tree:
    """The cgroup mount, the layout of governor's groups in it and, with the systemd
    driver, the driver that makes and changes them (a context manager)."""

    def __init__(self, fs: CgroupFS, layout: Layout, driver: SystemdDriver | None,
                 why: str) -> None:
        self.fs = fs
        self.layout = layout
        self.driver = driver
        self.why = why

    @property
    def name(self) -> str:
        return self.layout.driver

    def executor(self, plan: Plan) -> Executor | None:
        """The executor of ``plan`` (None: the cgroupfs writes)."""
        return self.driver.executor(plan) if self.driver is not None else None

    def close(self) -> None:
        if self.driver is not None:
            self.driver.close()
        self.fs.close()

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_cgroup(cfg: Config) -> CgroupFS:
    """The cgroup2 mount (from the configuration, or discovered), verified with statfs."""
    from governor.cgroupfs.files import CgroupFS
    from governor.cgroupfs.mount import find_cgroup2

    return CgroupFS(Path(cfg.cgroup_root) if cfg.cgroup_root else find_cgroup2())


def open_tree(cfg: Config, *, writes: bool = True, run_dir: str = RUN_SYSTEMD) -> Tree:
    """Open the cgroup2 mount (configured, or discovered and verified with statfs) with
    the driver :func:`choose` picks.  ``writes``: the caller will create or change groups
    (the cgroupfs driver then refuses a subtree systemd did not delegate)."""
    name, why = choose(cfg, run_dir=run_dir)
    layout = layout_for(cfg, run_dir=run_dir)
    fs = open_cgroup(cfg)
    try:
        driver = None
        if name == "systemd":
            driver = open_systemd(cfg, fs, layout)
        elif writes:
            check_cgroupfs_allowed(cfg, fs, run_dir=run_dir)
    except BaseException:
        fs.close()
        raise
    return Tree(fs, layout, driver, why)
