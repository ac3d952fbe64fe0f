"""The ``governor`` command line: the top group, which loads each command from its domain.

Exit codes (every command): 0 success; 1 the thing checked is wrong (invalid policy, a
failed doctor check, a bill that cannot be made from the data); 2 usage or environment
error (bad option, unreadable config, no cgroup v2).  A traceback is never the answer to
bad input: every :class:`~governor.errors.GovernorError` becomes one clear message.

The convention every command group follows:

* **Where a command lives.**  In its domain package's ``cli.py`` (``governor.store.cli``
  has ``db``, ``governor.billing.cli`` has ``usage`` and ``bill``, ...), next to the code
  it drives; :data:`LAZY_COMMANDS` maps each top-level name to the module and to what
  registers it there (a ``click`` command or group, or a ``register(main)`` function for
  a module with several), and the module is imported only when the command is named (or
  ``--help`` lists it).  Only ``doctor``, which belongs to no domain, is defined here.
* **What a command module does.**  It parses arguments and prints, nothing else: the work
  is a function of the domain (``governor.placement.front.launch_request``,
  ``governor.store.migrate.upgrade_database``, ``governor.oom.store.query_events``, ...)
  that takes parsed values and returns data, so the daemon, the demo and the tests call
  the same code without click.
* **Options.**  Shared ones come from :mod:`governor.clikit`: ``@config_options``
  (``--config``, ``--policy``, ``--database``, ``--cgroup-root``, ``--subtree``; the
  command gets ``cfg``, a loader called once the arguments are checked) and ``FORMAT``
  (``--format table|json``; a command with more formats declares its own ``--format``
  with the ``fmt`` parameter name).  Option names are long and spelled as the
  configuration keys they override; ``--tenant``/``-t`` and ``--group``/``-g`` name a
  group.  JSON output goes through :func:`governor.clikit.emit_json`.
* **Errors.**  A command raises: a :class:`~governor.errors.GovernorError` (its
  ``exit_code``, 2 unless the class says otherwise) or a ``click`` usage error (exit 2);
  :func:`governor.clikit.run_command` turns either into one masked line on stderr and
  the exit code.  A command exits 1 itself (``sys.exit(1)``) only to say that what it
  checked is wrong.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

import click

from governor import __version__
from governor.clikit import FORMAT, config_options, emit_json, run_command
from governor.config import Config

__all__ = ["FORMAT", "LAZY_COMMANDS", "config_options", "emit_json", "main", "main_group",
           "run_command"]


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
    "db": (("governor.store.cli", "db"),),
    "usage": (("governor.billing.cli", "register"),),
    "bill": (("governor.billing.cli", "register"),),
    "recommend": (("governor.recommend.cli", "recommend_command"),),
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


if __name__ == "__main__":
    sys.exit(main())
