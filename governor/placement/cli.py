"""``governor launch`` and ``governor ps``."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any, TypeVar

import click

from governor.config import Config
from governor.errors import UnknownTenant
from governor.policy import Policy, load_policy

F = TypeVar("F", bound=Callable[..., Any])


#: ``governor launch`` and ``governor-launch`` (the launcher's client) take the same
#: options and arguments
LAUNCH_SETTINGS: dict[str, Any] = {"ignore_unknown_options": True,
                                   "allow_interspersed_args": False}


def launch_options(func: F) -> F:
    """The options and arguments of a launch (``governor launch``, ``governor-launch``)."""
    for deco in reversed((
        click.option("--tenant", "-t", required=True, help="tenant of the group"),
        click.option("--group", "-g", "group", required=True, help="group to run in"),
        click.option("--unshare", metavar="NS[,NS...]",
                     help="new namespaces: pid, mount, uts, ipc, net, cgroup, user (pid "
                     "implies mount; with --image: default pid,mount,uts,ipc,net)"),
        click.option("--image", metavar="NAME[:TAG]",
                     help="run in a container of this image of the store (governor image "
                     "ls)"),
        click.option("--keep", is_flag=True,
                     help="with --image: keep the container's upper layer after it ends"),
        click.option("--hostname", help="hostname inside the new uts namespace"),
        click.option("--user", "-u", metavar="USER", help="run as this user (name or uid): "
                     "its own groups, a new session, no_new_privs"),
        click.option("--env", "-e", "env", metavar="NAME[=VALUE]", multiple=True,
                     help="pass this variable (NAME alone: its value here, if set); "
                     "repeatable"),
        click.argument("command", nargs=-1, required=False, type=click.UNPROCESSED),
    )):
        func = deco(func)
    return func


def run_launch(load: Callable[[], tuple[Config, Policy]], *, tenant: str, group: str,
               unshare: str | None, image: str | None, keep: bool, hostname: str | None,
               user: str | None, env: tuple[str, ...], command: tuple[str, ...],
               caller: Mapping[str, str] | None = None) -> int:
    """Check the options of a launch (``governor launch``, a ``governor-launch`` request)
    and run it (:func:`governor.placement.front.launch_request`); returns the exit code.
    ``load()`` gives the configuration and policy, once the options are checked (a usage
    error is reported first, as click reports its own).  ``caller``: the environment of
    who asked (default governor's own)."""
    from governor.placement.front import launch_request
    from governor.placement.identity import LaunchError, parse_env_options

    if caller is None:
        caller = os.environ
    if image is None and not command:
        raise click.UsageError("no command given: governor launch ... -- CMD [ARGS...]")
    if keep and image is None:
        raise click.BadParameter("--keep is for a container of an image (--image)",
                                 param_hint="--keep")
    try:
        passed = parse_env_options(env, caller)
    except LaunchError as e:
        raise click.BadParameter(str(e), param_hint="--env") from None
    ref = None
    if image is not None:
        from governor.image.errors import ImageError
        from governor.image.oci import parse_image_ref

        try:
            ref = parse_image_ref(image)
        except ImageError as e:
            raise click.BadParameter(str(e), param_hint="--image") from None
    return launch_request(load, tenant=tenant, group=group, unshare=unshare, image=ref,
                          keep=keep, hostname=hostname, user=user, env=passed,
                          command=command, caller=caller)


def register(main: click.Group) -> None:
    from governor.clikit import FORMAT, config_options, emit_json
    from governor.driver import open_tree

    @main.command(context_settings=LAUNCH_SETTINGS)
    @config_options
    @launch_options
    def launch(*, cfg: Callable[[], Config], **opts: Any) -> None:
        """Run COMMAND inside a group from its first instruction.

        \b
        governor launch --tenant acme --group web --unshare pid,mount,uts,net -- CMD ARGS
        The command gets a clean environment (PATH, HOME, USER, LOGNAME, SHELL of the user
        it runs as; TERM, LANG, LC_*, TZ; and each --env), descriptors 0-2 only.
        Exit: the command's code; 128+N if signal N killed it; 125 governor could not
        launch it; 126 not executable; 127 not found; 2 usage.  If the group's policy has
        oom.actions = ["restart"], an OOM-killed command is restarted (oom.restart_max,
        oom.restart_backoff).

        \b
        governor launch --tenant acme --group web --image acme/web:v2 [--keep] -- [CMD]
        A container of a stored image: its layers under a fresh upper layer (overlayfs),
        pivot_root, its own /proc, /dev and read-only /sys, the image's Env, WorkingDir,
        Entrypoint + Cmd (CMD replaces Cmd) and User (from the image's /etc/passwd).
        """
        def load() -> tuple[Config, Policy]:
            c = cfg()
            return c, load_policy([c.policy])

        sys.exit(run_launch(load, **opts))

    @main.command()
    @config_options
    @click.option("--socket", "socket_path", metavar="PATH",
                  help="unix socket to serve [default: [launcher] socket, "
                  "/run/governor/launch.sock]")
    def launcher(cfg: Callable[[], Config], socket_path: str | None) -> None:
        """Serve governor-launch: `governor launch` without Python's start.

        \b
        governor-launch --tenant acme --group web --image acme/web:v2 -- CMD ARGS
        takes the options of `governor launch` (not --config and its overrides: this
        process's configuration holds) and hands the launch to this process, which has
        imported governor and read the configuration and policy (again when a policy file
        changes, or on SIGHUP).  Each launch runs in a shim process of its own that
        outlives this one: stopping or restarting the launcher touches no container.
        Root only: the socket is 0600 and each client's uid is checked.
        """
        from governor.clikit import run_command
        from governor.log import setup_logging
        from governor.placement.front import warm_up
        from governor.placement.launcher import Cached, Launcher, Request, bind
        from governor.sdnotify import Notifier

        c = cfg()
        setup_logging(c.log_format, c.log_level)
        path = socket_path or c.launcher_socket
        pol: Cached[Policy] = Cached([c.policy], load_policy)
        pol.refresh()
        warm_up(c)

        @click.command(context_settings=LAUNCH_SETTINGS)
        @launch_options
        @click.option("--config", "--policy", "--database", "--cgroup-root", "--subtree",
                      "refused", metavar="X", hidden=True, multiple=True)
        def request(refused: tuple[str, ...], **opts: Any) -> None:
            if refused:
                raise click.UsageError(
                    "--config, --policy, --database, --cgroup-root and --subtree are the "
                    f"launcher's own ({c.source or 'its configuration'}); run `governor "
                    "launch` to launch with other settings")
            sys.exit(run_launch(lambda: (c, pol.get()), caller=client_env, **opts))

        client_env: dict[str, str] = {}

        def handle(req: Request) -> int:  # in the shim: one request
            client_env.update(req.env)
            return run_command(request, req.argv, "governor-launch")

        notifier = Notifier()
        sock = bind(path)
        try:
            def ready() -> None:
                notifier.notify("READY=1", f"STATUS=serving {path}")
                click.echo(f"governor launcher: serving {path}", err=True)

            def reload() -> None:
                notifier.notify("RELOADING=1")
                pol.refresh(force=True)
                notifier.notify("READY=1")

            Launcher(sock, handle, before_fork=pol.refresh, on_reload=reload,
                     ready=ready).serve()
            notifier.notify("STOPPING=1")
        finally:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(path)

    @main.command()
    @config_options
    @click.option("--tenant", "-t", help="only this tenant's groups")
    @FORMAT
    def ps(cfg: Callable[[], Config], tenant: str | None, fmt: str) -> None:
        """List the processes of each managed group."""
        c = cfg()
        pol = load_policy([c.policy])
        if tenant is not None and tenant not in pol.tenants:
            raise UnknownTenant(tenant, where=f"not in the policy {c.policy}",
                                known=list(pol.tenants))
        from governor.placement.ps import ps_rows

        with open_tree(c, writes=False) as t:
            rows = ps_rows(t.fs, t.layout, pol, tenant=tenant)
        if fmt == "json":
            emit_json({"processes": [asdict(r) for r in rows]})
            return
        head = f"{'GROUP':<24} {'PID':>7} {'USER':<10} {'PIDNS':<16} {'SINCE':<25} COMMAND"
        click.echo(head)
        for r in rows:
            ns = "?" if r.pidns is None else f"{r.pidns}" + ("" if r.container else " host")
            click.echo(f"{r.group:<24} {r.pid:>7} {r.user:<10} {ns:<16} {r.since:<25} "
                       f"{r.command}")
