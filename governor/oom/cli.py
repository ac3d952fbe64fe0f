"""``governor events``: the OOM events and early warnings recorded in the database."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from governor.clikit import FORMAT, config_options, emit_json
from governor.config import Config
from governor.oom.events import ALL_KINDS
from governor.oom.store import read_events

_REL = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")


def parse_since(value: str, now: datetime | None = None) -> datetime:
    """``"2h"``/``"30m"``/``"1d"`` ago, or an ISO 8601 time (UTC unless it says otherwise)."""
    now = now or datetime.now(UTC)
    m = _REL.match(value.strip())
    if m:
        secs = float(m[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]
        return now - timedelta(seconds=secs)
    try:
        t = datetime.fromisoformat(value.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: use e.g. 2h, 30m, 1d or 2026-01-31T12:00:00Z",
                                 param_hint="--since") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None)
    for col in ("time (UTC)", "node", "tenant", "group", "kind", "count", "pid", "command",
                "rss", "note"):
        table.add_column(col, justify="right" if col in ("count", "pid", "rss") else "left")
    for r in rows:
        rss = "" if r["rss_bytes"] is None else f"{r['rss_bytes'] / 2**20:.1f} MiB"
        table.add_row(r["ts"][:23].replace("T", " "), r["node"], r["tenant"],
                      r["group"] or "-", r["kind"], str(r["count"]),
                      "" if r["pid"] is None else str(r["pid"]), r["comm"] or "", rss,
                      "missed while down" if r["missed_while_down"] else "")
    if not rows:
        click.echo("no events")
        return
    # a pipe or a file gets full lines, a terminal its own width
    Console(width=None if sys.stdout.isatty() else 200).print(table)


@click.command("events")
@config_options
@click.option("--tenant", metavar="T", help="only this tenant")
@click.option("--node", metavar="NAME", help="only this node's events")
@click.option("--kind", type=click.Choice(ALL_KINDS),
              help="only this kind (memory.events key, or pressure for PSI warnings)")
@click.option("--since", metavar="T", help="from this time: 2h, 30m, 1d or ISO 8601")
@click.option("--limit", type=click.IntRange(1), help="only the newest N")
@FORMAT
def events_command(cfg: Callable[[], Config], *, tenant: str | None, node: str | None,
                   kind: str | None, since: str | None, limit: int | None,
                   fmt: str) -> None:
    """List OOM kills, OOM and limit events and early memory warnings."""
    conf = cfg()
    start = parse_since(since) if since else None
    rows = read_events(conf.database_url, tenant=tenant, kind=kind, since=start, limit=limit,
                       node=node)
    if fmt == "json":
        emit_json({"events": rows})
    else:
        _table(rows)


def register(main_group: click.Group) -> None:
    main_group.add_command(events_command)
