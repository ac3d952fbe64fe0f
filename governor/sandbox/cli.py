"""``governor sandbox``: set up and use the cgroup v2 test VM (see governor.sandbox).

Registered in the main command line with ``main.add_command(sandbox)``; also runnable alone
as ``python -m governor.sandbox.cli {setup,exec}``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from governor.errors import GovernorError
from governor.sandbox import build, run


def _fail(err: GovernorError) -> None:
    click.echo(f"governor sandbox: {err}", err=True)
    sys.exit(err.exit_code)


def _port_forward(text: str) -> tuple[int, int]:
    host, sep, guest = text.partition(":")
    if not sep:
        guest = host
    try:
        return int(host), int(guest)
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected HOST_PORT:GUEST_PORT") from None


def _host_forward(text: str) -> tuple[str, int, int]:
    addr, _, rest = text.partition(":")
    port, _, host = rest.partition(":")
    try:
        return addr, int(port), int(host)
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected ADDR:PORT:HOSTPORT, "
                                 "e.g. 10.0.2.100:5432:5433") from None


@click.group("sandbox")
def sandbox() -> None:
    """A throw-away QEMU guest with a real cgroup v2 kernel (for the kernel tests)."""


@sandbox.command("setup")
@click.option(
    "--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="where to keep the kernel and initramfs [$GOVERNOR_SANDBOX_DIR or "
    "~/.cache/governor/sandbox]",
)
@click.option(
    "--no-install", is_flag=True,
    help="never run apt-get install; fail naming the missing packages instead",
)
def setup_cmd(*, cache_dir: Path | None, no_install: bool) -> None:
    """Install QEMU and busybox if needed, fetch the kernel, build the initramfs (idempotent)."""
    t0 = time.monotonic()
    try:
        root = build.setup(
            cache_dir,
            install_packages=not no_install,
            log=lambda m: click.echo(f"sandbox setup: {m}", err=True),
        )
    except GovernorError as e:
        _fail(e)
        return
    stamp = json.loads((root / "stamp.json").read_text())
    click.echo(
        f"sandbox ready in {root} ({time.monotonic() - t0:.1f}s): kernel "
        f"{stamp['kernel_release']} ({stamp['kernel_package']} {stamp['kernel_version']}), "
        f"qemu {stamp['qemu']}, busybox {stamp['busybox']}"
    )


@sandbox.command(
    "exec",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="the directory `setup` prepared")
@click.option("--mem", "mem_mb", type=click.IntRange(min=128), default=1024, show_default=True,
              help="guest RAM, MiB")
@click.option("--cpus", type=click.IntRange(min=1), default=2, show_default=True,
              help="guest vCPUs")
@click.option("--disk-mb", type=click.IntRange(min=0), default=256, show_default=True,
              help="blank scratch disk /dev/vda, MiB (0: none)")
@click.option("--timeout", type=click.FloatRange(min=1), default=600, show_default=True,
              help="seconds before the VM is killed (exit code 124)")
@click.option("--rw", "rwdirs", multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="host directory shared read-write at the same path (repeatable)")
@click.option("--env", "env_names", multiple=True, metavar="NAME[=VALUE]",
              help="pass a host environment variable (or set one) in the guest (repeatable)")
@click.option("--port", "ports", multiple=True, metavar="HOST:GUEST",
              help="forward 127.0.0.1:HOST on the host to GUEST port in the guest (repeatable)")
@click.option("--to-host", "to_host", multiple=True, metavar="ADDR:PORT:HOSTPORT",
              help="the guest's connections to ADDR:PORT (in 10.0.2.0/24) reach "
              "127.0.0.1:HOSTPORT on the host, e.g. 10.0.2.100:5432:5433 (repeatable)")
@click.option("--verbose", is_flag=True, help="show the guest console on stderr")
@click.option("--systemd", is_flag=True,
              help="boot the host's systemd as PID 1 (with D-Bus) and run COMMAND as a "
              "service once the system is up (about twice the boot time)")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_cmd(
    *,
    cache_dir: Path | None,
    mem_mb: int,
    cpus: int,
    disk_mb: int,
    timeout: float,
    rwdirs: tuple[Path, ...],
    env_names: tuple[str, ...],
    ports: tuple[str, ...],
    to_host: tuple[str, ...],
    verbose: bool,
    systemd: bool,
    command: tuple[str, ...],
) -> None:
    """Boot the guest, run COMMAND as root in this directory, exit with its exit code.

    Put `--` before COMMAND.  With --systemd, COMMAND runs as governor-sandbox.service
    (same user, directory, environment and streams).  Exit codes: COMMAND's own; 124
    timed out; 125 the guest reported none (its console tail is printed).
    """
    env: dict[str, str] = {}
    for item in env_names:
        name, sep, value = item.partition("=")
        if sep:
            env[name] = value
        elif name in os.environ:
            env[name] = os.environ[name]
    try:
        rc = run.exec_(
            list(command),
            cache_dir=cache_dir,
            rwdirs=list(rwdirs),
            env=env,
            mem_mb=mem_mb,
            cpus=cpus,
            disk_mb=disk_mb,
            timeout=timeout,
            verbose=verbose,
            port_forwards=[_port_forward(p) for p in ports],
            host_forwards=[_host_forward(f) for f in to_host],
            systemd=systemd,
        )
    except GovernorError as e:
        _fail(e)
        return
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(rc)


if __name__ == "__main__":
    sandbox()
