"""``governor events``: the OOM events and early warnings recorded in the database."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from governor.cli import FORMAT, config_options, emit_json
from governor.config import Config
from governor.errors import UnknownTenant
from governor.oom.events import ALL_KINDS

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

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


def query_events(session: Session, *, tenant: str | None = None, kind: str | None = None,
                 since: datetime | None = None, limit: int | None = None
                 ) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from governor.store.models import Group, Node, OomEvent, Tenant

    q = (select(OomEvent, Node.name, Tenant.name, Group.path, Group.cgroup_id)
         .join(Node, Node.id == OomEvent.node_id).join(Tenant, Tenant.id == OomEvent.tenant_id)
         .outerjoin(Group, Group.id == OomEvent.group_id)
         .order_by(OomEvent.ts, OomEvent.id))
    if tenant is not None:
        known = set(session.execute(select(Tenant.name)).scalars())
        if tenant not in known:
            raise UnknownTenant(tenant, where="never seen in this database", known=sorted(known))
        q = q.where(Tenant.name == tenant)
    if kind is not None:
        q = q.where(OomEvent.kind == kind)
    if since is not None:
        q = q.where(OomEvent.ts >= since)
    rows = session.execute(q).all()
    if limit is not None:
        rows = rows[-limit:]
    return [{"ts": e.ts.isoformat(), "node": node, "tenant": t,
             "group": path.partition("/")[2] or None if path else None,
             "cgroup_id": cid, "kind": e.kind, "count": e.count, "pid": e.pid,
             "comm": e.comm, "rss_bytes": e.rss_bytes,
             "missed_while_down": e.missed_while_down}
            for e, node, t, path, cid in rows]


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
@click.option("--kind", type=click.Choice(ALL_KINDS),
              help="only this kind (memory.events key, or pressure for PSI warnings)")
@click.option("--since", metavar="T", help="from this time: 2h, 30m, 1d or ISO 8601")
@click.option("--limit", type=click.IntRange(1), help="only the newest N")
@FORMAT
def events_command(cfg: Callable[[], Config], *, tenant: str | None, kind: str | None,
                   since: str | None, limit: int | None, fmt: str) -> None:
    """List OOM kills, OOM and limit events and early memory warnings."""
    from governor.store.db import check_schema, connect, database_errors, session_factory

    conf = cfg()
    start = parse_since(since) if since else None
    engine = connect(conf.database_url)
    try:
        with database_errors(conf.database_url, "read"), session_factory(engine)() as session:
            check_schema(engine)
            rows = query_events(session, tenant=tenant, kind=kind, since=start, limit=limit)
    finally:
        engine.dispose()
    if fmt == "json":
        emit_json({"events": rows})
    else:
        _table(rows)


def register(main_group: click.Group) -> None:
    main_group.add_command(events_command)
