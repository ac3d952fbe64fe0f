"""The start-up's steps that stand on their own: ``[placement] favordynmods`` turned on
for the cgroup2 mount, ``[placement] keep_warm`` as the driver lets it run, and the
reconcile's inotify watch.  Each logs what it could not do and lets the daemon run on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from governor.cgroupfs.mount import Remount
from governor.config import Config
from governor.driver import Tree, delegated

log = logging.getLogger("governor.daemon")


def apply_favordynmods(cfg: Config, cgroup_root: str | Path, *,
                       mountinfo: str | Path = "/proc/self/mountinfo",
                       remount: Remount | None = None) -> bool:
    """``[placement] favordynmods``: turn the option on for the cgroup2 mount before the
    placer starts.  True when it is on afterwards.  Never raises: a refusal is logged as an
    error with its fix, and the daemon runs on without it (each move then waits for an RCU
    grace period, see docs/placement.md)."""
    if not cfg.favordynmods:
        return False
    from governor.cgroupfs import mount
    from governor.errors import GovernorError, MountError

    try:
        changed = mount.favor_dynmods(cgroup_root, mountinfo=mountinfo, remount=remount)
    except MountError as e:
        error, fix = e.detail, e.fix
    except (GovernorError, OSError) as e:
        error, fix = str(e), "needs Linux 6.0+ and root"
    else:
        if changed:
            log.info("favordynmods turned on for the cgroup2 mount: moves no longer wait "
                     "for an RCU grace period", extra={"cgroup_root": str(cgroup_root)})
        else:
            log.debug("favordynmods already on", extra={"cgroup_root": str(cgroup_root)})
        return True
    log.error("favordynmods not turned on: placement works, each move waits for an RCU grace "
              "period", extra={"error": error, "fix": fix})
    return False


def keep_warm_for(tree: Tree, keep_warm: float,
                  proc_cgroup: str = "/proc/self/cgroup") -> float:
    """``[placement] keep_warm`` as it may run: its no-op migrations write the daemon's own
    cgroup, which with the systemd driver is governor.service's: only when systemd
    delegated that unit to governor (``Delegate=yes``), else 0 (off)."""
    if keep_warm <= 0 or tree.driver is None:
        return keep_warm
    try:
        with open(proc_cgroup) as f:
            own = next((line.split("::", 1)[1].strip() for line in f
                        if line.startswith("0::")), "")
    except OSError:
        own = ""
    if own and delegated(tree.fs, own.strip("/")) is not None:
        return keep_warm
    log.info("keep_warm off: the daemon's own cgroup is not delegated to it (Delegate=yes "
             "in governor.service turns it on)", extra={"cgroup": own or "unknown"})
    return 0.0


def drift_watch(fs: Any) -> Any:
    """The reconcile's inotify watch (None without inotify: every reconcile reads all)."""
    from governor.enforce.drift import DriftWatch

    try:
        return DriftWatch(fs)
    except OSError as e:
        log.warning("no inotify for drift: each reconcile reads every managed file",
                    extra={"error": e.strerror})
        return None
