"""What the host has: Debian packages (checked with dpkg-query, installed with apt-get
when root), the QEMU binary, and the host's systemd and D-Bus for the systemd mode."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from governor.sandbox.errors import SandboxError, SandboxNotReady
from governor.sandbox.systemd_mode import SYSTEMD_BIN

__all__ = ["APT_PACKAGES", "SYSTEMD_APT_PACKAGES", "Log"]

#: Debian packages the sandbox needs on the host
APT_PACKAGES = ("qemu-system-x86", "busybox-static")
#: Debian packages ``exec_(systemd=True)`` needs on the host (the guest runs the host's own)
SYSTEMD_APT_PACKAGES = ("systemd", "dbus")

Log = Callable[[str], None]


def dpkg_installed(pkg: str) -> bool:
    if shutil.which("dpkg-query") is None:
        return False
    r = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, check=False
    )
    return r.returncode == 0 and r.stdout.strip().endswith(" installed")


def dpkg_version(pkg: str) -> str:
    r = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True, check=False
    )
    return r.stdout.strip() if r.returncode == 0 else "unknown"


def run_tool(argv: Sequence[str], what: str, *, cwd: Path | None = None) -> str:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        r = subprocess.run(
            list(argv), cwd=cwd, env=env, capture_output=True, text=True, check=False
        )
    except FileNotFoundError as e:
        raise SandboxError(f"{what}: {argv[0]} not found ({e})") from e
    if r.returncode != 0:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-15:])
        raise SandboxError(f"{what} failed ({shlex.join(argv)}, exit {r.returncode}):\n{tail}")
    return r.stdout


def ensure_packages(install: bool, log: Log) -> None:
    missing = [p for p in APT_PACKAGES if not dpkg_installed(p)]
    # the systemd mode's packages: installed when we can, else only a warning (the bare
    # mode does not need them; `exec --systemd` then names them)
    sd_missing = [p for p in SYSTEMD_APT_PACKAGES if not dpkg_installed(p)]
    if sd_missing and (not install or os.geteuid() != 0):
        log(
            f"missing {', '.join(sd_missing)}: `governor sandbox exec --systemd` will not "
            f"work until `apt-get install {' '.join(sd_missing)}` is run as root"
        )
        sd_missing = []
    missing += sd_missing
    if not missing:
        return
    cmd = f"apt-get update && apt-get install -y --no-install-recommends {' '.join(missing)}"
    if not install:
        raise SandboxError(f"missing Debian packages {', '.join(missing)}: run `{cmd}` as root")
    if os.geteuid() != 0:
        raise SandboxError(
            f"missing Debian packages {', '.join(missing)}: run `sudo sh -c '{cmd}'`, "
            "then `governor sandbox setup` again"
        )
    log(f"installing {' '.join(missing)} with apt-get")
    run_tool(["apt-get", "update", "-qq"], "apt-get update")
    run_tool(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        "apt-get install",
    )


def qemu_binary() -> str:
    """``GOVERNOR_SANDBOX_QEMU``, else qemu-system-x86_64 on ``PATH``."""
    qemu = os.environ.get("GOVERNOR_SANDBOX_QEMU") or shutil.which("qemu-system-x86_64")
    if not qemu:
        raise SandboxError(
            "qemu-system-x86_64 not found: run `apt-get install qemu-system-x86` as root "
            "(or `governor sandbox setup`)"
        )
    return qemu


def check_systemd_host() -> None:
    missing = [
        what for what, path in (("systemd", SYSTEMD_BIN), ("dbus", "/usr/bin/dbus-daemon"))
        if not os.access(path, os.X_OK)
    ]
    if missing:
        raise SandboxNotReady(
            f"--systemd boots the host's own systemd and D-Bus, and {', '.join(missing)} "
            f"is missing here: run `apt-get install {' '.join(missing)}` as root (or "
            "`governor sandbox setup` as root)"
        )
