"""``governor recommend``: parses the options and prints; the work is
:mod:`governor.recommend.service`'s (the reading and the rules) and
:mod:`governor.recommend.dropin`'s (``--format toml``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime

import click

from governor.clikit import config_options
from governor.config import Config
from governor.recommend.rules import Settings
from governor.recommend.service import (
    parse_percent,
    parse_window,
    policy_at,
    recommend_groups,
)


@click.command("recommend")
@config_options
@click.option("--tenant", "-t", default=None, help="only this tenant (default: all)")
@click.option("--group", "-g", default=None, help="only this group of --tenant")
@click.option("--window", default="7d", show_default=True,
              help="the history to read, ending now: 90m, 1h, 7d, 2w")
@click.option("--headroom", default="20%", show_default=True,
              help="added above the measured working set and CPU usage")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "toml"]),
              default="table", show_default=True,
              help="toml: a policy drop-in to review with `governor policy plan`")
def recommend_command(cfg: Callable[[], Config], *, tenant: str | None, group: str | None,
                      window: str, headroom: str, fmt: str) -> None:
    """Suggest memory.max, memory.high, cpu.max and cpu.weight per group from the stored
    history, and flag groups that are starved or over-provisioned (docs/recommend.md)."""
    from governor.recommend.render import render

    span = parse_window(window)
    settings = Settings(headroom=parse_percent(headroom, "--headroom"))
    c = cfg()
    policy = policy_at(c.policy, required=fmt == "toml")
    recs = recommend_groups(c.database_url, settings=settings, window=span, tenant=tenant,
                            group=group, policy=policy)
    if fmt != "toml":
        render(recs, fmt, sys.stdout, window=span, settings=settings)
        return
    from governor.recommend.dropin import build_dropin

    now = datetime.now(UTC).isoformat(timespec="seconds")
    text, problems = build_dropin([c.policy], recs, header=[
        f"# governor recommend at {now}: window {window}, headroom {headroom}, working set "
        f"{recs[0].basis if recs else 'memory.current'} (docs/recommend.md)"])
    click.echo(text, nl=False)
    if problems:
        click.echo(f"governor: the drop-in does not load with the policy: "
                   f"{len(problems)} problem(s), said in its header", err=True)
        sys.exit(1)

