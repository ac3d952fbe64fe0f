"""What every command module shares: the configuration options and ``cfg`` loader,
``--format``, JSON output, and running a command with governor's error-to-exit-code
mapping.  The convention these follow is written down in :mod:`governor.cli`.

This module imports no command module: the command modules import it, and
:mod:`governor.cli` loads them by name (so nothing here closes an import circle).
"""

from __future__ import annotations

import functools
import io
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

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
