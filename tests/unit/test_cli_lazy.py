"""The command table of ``governor``: each command loads with its module, and only then.

Issue #16: ``governor run`` imported every command module (rich and the reporting
commands with them) into the daemon, resident for its whole life."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from governor.cli import LAZY_COMMANDS, LazyGroup, _load, main_group


def test_every_lazy_command_resolves_to_itself() -> None:
    for name in LAZY_COMMANDS:
        cmd = main_group.get_command(click.Context(main_group), name)
        assert cmd is not None and cmd.name == name, name


def test_the_table_names_every_command_its_modules_register() -> None:
    # each module registers exactly the names the table maps to it (a command added to a
    # module and not to the table would be missing from `governor`)
    by_module: dict[tuple[str, str], set[str]] = {}
    for name, sources in LAZY_COMMANDS.items():
        by_module.setdefault(sources[0], set()).add(name)
    for (module, attr), names in by_module.items():
        g = LazyGroup("probe")
        _load(g, next(iter(names)))
        assert set(g.commands) == names, (module, attr)


def test_policy_gets_the_enforcer_subcommands() -> None:
    r = CliRunner().invoke(main_group, ["policy", "--help"])
    assert r.exit_code == 0, r.output
    for sub in ("check", "plan", "apply"):
        assert f"  {sub}" in r.output, (sub, r.output)


def test_help_lists_every_command() -> None:
    r = CliRunner().invoke(main_group, ["--help"])
    assert r.exit_code == 0, r.output
    for name in (*LAZY_COMMANDS, "bill", "usage", "db", "doctor"):
        assert f"  {name}" in r.output, name


def test_run_does_not_import_the_reporting_commands() -> None:
    code = ("import sys\n"
            "from governor.cli import main_group\n"
            "try:\n"
            "    main_group(['run', '--help'], standalone_mode=False)\n"
            "except SystemExit:\n"
            "    pass\n"
            "print(sorted(m for m in ('rich', 'governor.status.cli', 'governor.billing.cli',"
            " 'governor.placement.cli', 'governor.sandbox.cli') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out


def test_re2_is_loaded_by_the_first_cmdline_pattern_only(tmp_path: Path) -> None:
    """A policy without ``cmdline`` rules never loads RE2 (2.7 MiB of the daemon's RSS);
    one with a ``cmdline`` rule loads it when the policy is loaded."""
    plain = tmp_path / "plain.toml"
    plain.write_text('[tenants.acme.groups.web]\ncpu.weight = 100\n'
                     '[[tenants.acme.groups.web.match]]\ncomm = "nginx"\n')
    ruled = tmp_path / "ruled.toml"
    ruled.write_text('[tenants.acme.groups.web]\ncpu.weight = 100\n'
                     '[[tenants.acme.groups.web.match]]\ncmdline = "gunicorn.*app"\n')
    code = ("import sys\n"
            "import governor.daemon, governor.placement.rules\n"
            "from governor.policy.loader import load_policy\n"
            "p = load_policy(sys.argv[1])\n"
            "print('re2' in sys.modules)\n")
    for path, loaded in ((plain, False), (ruled, True)):
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                             text=True, check=True).stdout
        assert out.strip().splitlines()[-1] == str(loaded), (path, out)
