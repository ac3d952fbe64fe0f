"""The ``governor`` command line.

Exit codes (every command): 0 success; 1 the thing checked is wrong (invalid policy, a
failed doctor check, a bill that cannot be made from the data); 2 usage or environment
error (bad option, unreadable config, no cgroup v2).  A traceback is never the answer to
bad input: every :class:`~governor.errors.GovernorError` becomes one clear message.
"""

from __future__ import annotations

import functools
import importlib
import io
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from governor import __version__
from governor.config import Config, load_config
from governor.errors import GovernorError

F = TypeVar("F", bound=Callable[..., Any])

FORMAT = click.option("--format", "fmt", type=click.Choice(["table", "json"]),
                      default="table", show_default=True,
                      help="table for people, json for scripts (stable field names)")


def config_options(func: F) -> F:
    """Add --config and the overrides every command takes; pass ``cfg`` (a loader)."""

    @click.option("--config", "config_path", type=click.Path(dir_okay=False),
                  envvar="GOVERNOR_CONFIG",
                  help="configuration file [default: /etc/governor/config.toml; "
                       "env GOVERNOR_CONFIG]")
    @click.option("--policy", "policy_path", metavar="PATH",
                  help="policy file or drop-in directory [env GOVERNOR_POLICY]")
    @click.option("--database", "database_url", metavar="URL",
                  help="database URL [env GOVERNOR_DATABASE]")
    @click.option("--cgroup-root", metavar="PATH",
                  help="cgroup2 mount to use [default: discovered; env GOVERNOR_CGROUP_ROOT]")
    @click.option("--subtree", metavar="NAME",
                  help="the governor's subtree under the root [default: governor.slice; "
                       "env GOVERNOR_SUBTREE]")
    @functools.wraps(func)
    def wrapper(*args: Any, config_path: str | None, policy_path: str | None,
                database_url: str | None, cgroup_root: str | None, subtree: str | None,
                **kwargs: Any) -> Any:
        def cfg() -> Config:
            return load_config(config_path, overrides={
                "governor.policy": policy_path, "database.url": database_url,
                "governor.cgroup_root": cgroup_root, "governor.subtree": subtree})
        return func(*args, cfg=cfg, **kwargs)

    return wrapper  # type: ignore[return-value]


def emit_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


#: the commands that live next to their domain code: name -> (module, attribute) to load,
#: a command or a function that registers its module's commands.  Loaded when named (or
#: listed by --help): `governor run` imports what the daemon runs, not rich and the
#: reporting commands (issue #16, resident memory)
LAZY_COMMANDS: dict[str, tuple[tuple[str, str], ...]] = {
    "sandbox": (("governor.sandbox.cli", "sandbox"),),
    "policy": (("governor.policy.cli", "policy"), ("governor.enforce.cli", "register")),
    "run": (("governor.enforce.cli", "register_run"),),
    "launch": (("governor.placement.cli", "register"),),
    "launcher": (("governor.placement.cli", "register"),),
    "ps": (("governor.placement.cli", "register"),),
    "events": (("governor.oom.cli", "register"),),
    "status": (("governor.status.cli", "register"),),
    "top": (("governor.status.cli", "register"),),
    "demo": (("governor.demo", "register"),),
    "image": (("governor.image.cli", "image"),),
}


class LazyGroup(click.Group):
    """A group whose :data:`LAZY_COMMANDS` are imported when first named."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            _load(self, cmd_name)
        return self.commands.get(cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="governor")
def main_group() -> None:
    """governor: a cgroup v2 resource governor and metering service."""


@main_group.command()
@config_options
@FORMAT
def doctor(cfg: Callable[[], Config], fmt: str) -> None:
    """Check that this host can be governed, and say how to fix what is missing."""
    from governor.doctor import render, run_checks

    results = run_checks(cfg())
    if fmt == "json":
        emit_json({"ok": all(r.ok or not r.required for r in results),
                   "checks": [r.as_dict() for r in results]})
    else:
        render(results)
    if not all(r.ok or not r.required for r in results):
        sys.exit(1)


@main_group.group("db")
def db_cmd() -> None:
    """The metering database: schema migrations."""


@db_cmd.command("upgrade")
@config_options
def db_upgrade(cfg: Callable[[], Config]) -> None:
    """Create or migrate the database schema to this governor's version."""
    from governor.store.cli import run_db_upgrade

    before, after = run_db_upgrade(cfg().database_url)
    click.echo(f"database schema already at {after}" if before == after else
               f"database schema upgraded from {before or 'nothing'} to {after}")


@db_cmd.command("current")
@config_options
@FORMAT
def db_current(cfg: Callable[[], Config], fmt: str) -> None:
    """Show the database's schema revision and the one this governor needs (exit 1 if
    they differ)."""
    from governor.store.cli import run_db_current

    have, need = run_db_current(cfg().database_url)
    if fmt == "json":
        emit_json({"current": have, "needed": need, "ok": have == need})
    else:
        click.echo(f"database schema: {have or 'nothing'}; governor needs: {need}")
    if have != need:
        sys.exit(1)


def _period(func: F) -> F:
    for opt in reversed([
        click.option("--tenant", default=None, help="only this tenant (default: all)"),
        click.option("--from", "start", default=None, help="start (UTC), e.g. 2026-11-01"),
        click.option("--to", "end", default=None, help="end (UTC, exclusive); default now"),
        click.option("--period", default=None, help="a UTC calendar month, e.g. 2026-11"),
    ]):
        func = opt(func)
    return func


@main_group.command("usage")
@config_options
@_period
@click.option("--by", type=click.Choice(["hour", "day", "group", "node"]), default="group",
              show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True)
def usage_cmd(cfg: Callable[[], Config], *, tenant: str | None, start: str | None,
              end: str | None, period: str | None, by: str, fmt: str) -> None:
    """Usage per hour, day, group or node, from the hourly rollups."""
    from governor.billing.cli import parse_period, run_usage

    a, b = parse_period(period, start, end)
    run_usage(cfg().database_url, tenant=tenant, start=a, end=b, by=by,  # type: ignore[arg-type]
              fmt=fmt)


@main_group.command("bill")
@config_options
@_period
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "focus"]),
              default="table", show_default=True)
def bill_cmd(cfg: Callable[[], Config], *, tenant: str | None, start: str | None,
             end: str | None, period: str | None, fmt: str) -> None:
    """Invoices: per group and resource, priced by the tenant's plan (``--period 2026-11``
    or ``--from``/``--to``); ``--format focus`` writes FinOps FOCUS columns."""
    from governor.billing.cli import parse_period, run_bill
    from governor.policy import load_policy

    c = cfg()
    a, b = parse_period(period, start, end)
    run_bill(c.database_url, load_policy([c.policy]), tenant=tenant, start=a, end=b, fmt=fmt)


def _load(group: click.Group, name: str) -> None:
    """Attach the command ``name`` from the module that defines it (with the others that
    module registers)."""
    for module, attr in LAZY_COMMANDS[name]:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                continue  # that part is not built (installed) here
            raise
        obj = getattr(mod, attr)
        if isinstance(obj, click.Command):
            group.add_command(obj)
        else:
            obj(group)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the command, turning governor errors into messages and exit codes.

    No password reaches the terminal: every message passes through
    :func:`governor.log.mask_secrets`.  An unexpected exception (a bug, or an environment
    problem no module turned into a :class:`GovernorError`) is one line on stderr, exit 2;
    its traceback, masked too, goes to the log at debug level (``log_level = "debug"``, or
    ``GOVERNOR_LOG_LEVEL=debug`` for a command that does not set up the daemon's log)."""
    return run_command(main_group, argv, "governor")


def run_command(cmd: click.Command, argv: list[str] | None, prog: str) -> int:
    """Run ``cmd`` as :func:`main` runs the ``governor`` group (the launcher's shims run
    ``governor-launch``'s requests this way)."""
    from governor.log import mask_secrets

    try:
        cmd.main(args=argv, prog_name=prog, standalone_mode=False)
    except GovernorError as e:
        click.echo(f"{prog}: error: {mask_secrets(str(e))}", err=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.ClickException as e:
        shown = io.StringIO()  # e.g. a bad option value: shown masked like the rest
        e.show(file=shown)
        click.echo(mask_secrets(shown.getvalue()), err=True, nl=False)
        return e.exit_code if e.exit_code != 1 else 2
    except click.exceptions.Abort:
        click.echo("governor: aborted", err=True)
        return 130
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except Exception as e:
        return _unexpected(e)
    return 0


def _unexpected(e: Exception) -> int:
    """One masked line for an exception nothing expected; the traceback to the log."""
    import logging
    import os

    from governor.log import KeyValueFormatter, mask_secrets

    log = logging.getLogger("governor.cli")
    if logging.getLogger("governor").handlers:  # the daemon's log (setup_logging)
        log.debug("unexpected error", exc_info=e)  # its formatter masks the traceback
    elif os.environ.get("GOVERNOR_LOG_LEVEL", "").strip().lower() == "debug":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(KeyValueFormatter(stamp=False))
        handler.handle(log.makeRecord(log.name, logging.DEBUG, __file__, 0, "unexpected error",
                                      (), (type(e), e, e.__traceback__)))
    first = (str(e).strip().splitlines() or [""])[0]
    what = f"{type(e).__name__}: {first}" if first else type(e).__name__
    click.echo(f"governor: error: unexpected {mask_secrets(what)} (the traceback is logged "
               "at debug level: log_level = \"debug\" in the configuration, or "
               "GOVERNOR_LOG_LEVEL=debug for this command)", err=True)
    return 2


if __name__ == "__main__":
    sys.exit(main())
