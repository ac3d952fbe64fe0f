"""The ``governor`` command line.

Exit codes (every command): 0 success; 1 the thing checked is wrong (invalid policy, a
failed doctor check, a bill that cannot be made from the data); 2 usage or environment
error (bad option, unreadable config, no cgroup v2).  A traceback is never the answer to
bad input: every :class:`~governor.errors.GovernorError` becomes one clear message.
"""

from __future__ import annotations

import functools
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


def _register() -> None:
    """Attach the command groups that live next to their domain code."""
    import importlib

    for module, name in (
        ("governor.sandbox.cli", "sandbox"),
        ("governor.policy.cli", "policy"),
        ("governor.enforce.cli", "register"),
        ("governor.enforce.cli", "register_run"),
        ("governor.store.cli", "db"),
        ("governor.billing.cli", "register"),
        ("governor.placement.cli", "register"),
        ("governor.oom.cli", "register"),
    ):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                continue  # that part is not built yet
            raise
        obj = getattr(mod, name, None)
        if isinstance(obj, click.Command):
            main_group.add_command(obj)
        elif callable(obj):
            obj(main_group)


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the command, turning governor errors into messages and exit codes."""
    try:
        main_group.main(args=argv, prog_name="governor", standalone_mode=False)
    except GovernorError as e:
        click.echo(f"governor: error: {e}", err=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.ClickException as e:
        e.show()
        return e.exit_code if e.exit_code != 1 else 2
    except click.exceptions.Abort:
        click.echo("governor: aborted", err=True)
        return 130
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
