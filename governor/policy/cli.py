"""``governor policy ...``: the policy commands (``check`` here; ``plan``/``apply`` join later).

Exit codes: 0 the policy is valid (warnings allowed), 1 it has errors, 2 usage error.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from governor.policy.loader import check_policy
from governor.policy.model import Policy
from governor.policy.problems import Problem


@click.group(name="policy")
def policy() -> None:
    """Check (and later plan and apply) policy files and policy.d directories."""


def _summary(policy_: Policy) -> str:
    groups = sum(len(t.groups) for t in policy_.tenants.values())
    return (f"policy valid: {len(policy_.tenants)} tenant{'s' * (len(policy_.tenants) != 1)}, "
            f"{groups} group{'s' * (groups != 1)}, "
            f"{len(policy_.plans)} plan{'s' * (len(policy_.plans) != 1)} "
            f"from {len(policy_.sources)} file{'s' * (len(policy_.sources) != 1)} "
            f"(digest {policy_.digest[:12]})")


def _failure(problems: list[Problem]) -> str:
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    return (f"policy invalid: {errors} error{'s' * (errors != 1)}, "
            f"{warnings} warning{'s' * (warnings != 1)}")


@policy.command("check")
@click.argument("paths", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="table: one line per problem; json: a list of objects.")
def check(paths: tuple[Path, ...], fmt: str) -> None:
    """Validate policy files and policy.d directories (*.toml, in name order).

    Prints every problem, then a one-line summary.  Exits 0 when valid, 1 when not.
    With --format json, stdout is a JSON list of problems (file, line, key, value,
    message, severity) and the summary goes to stderr.
    """
    policy_, problems = check_policy(list(paths))
    summary = _summary(policy_) if policy_ is not None else _failure(problems)
    if fmt == "json":
        click.echo(json.dumps([p.to_json() for p in problems], indent=2, ensure_ascii=False))
        click.echo(summary, err=True)
    else:
        for problem in problems:
            click.echo(str(problem))
        click.echo(summary)
    if policy_ is None:
        raise SystemExit(1)
