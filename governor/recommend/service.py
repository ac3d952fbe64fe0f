"""What ``governor recommend`` computes, from a database URL and parsed values: the
option parsers (errors name the option and the value), the policy's limits, and one
:class:`~governor.recommend.rules.Recommendation` per group."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final

from governor.errors import UnknownTenant
from governor.policy.model import Policy
from governor.recommend.errors import BadOption
from governor.recommend.history import known_groups, read_histories
from governor.recommend.rules import FILES, Recommendation, Settings, recommend
from governor.store.db import check_schema, connect, database_errors, session_factory

_DURATION: Final = re.compile(r"\A\s*(\d+(?:\.\d+)?)\s*(m|h|d|w)\s*\Z")
_UNIT_SECONDS: Final = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PERCENT: Final = re.compile(r"\A\s*(\d+(?:\.\d+)?)\s*%?\s*\Z")


def parse_window(value: str) -> timedelta:
    """``--window``: ``90m``, ``1h``, ``7d``, ``2w`` (a positive number and a unit)."""
    m = _DURATION.match(value)
    seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)] if m else 0.0
    if not m or not 0 < seconds <= 366 * 86400:
        raise BadOption(f"--window {value!r}: give a positive duration of at most a year "
                        f"with a unit m, h, d or w, e.g. 7d or 1h")
    return timedelta(seconds=seconds)


def parse_percent(value: str, option: str, *, top: float = 1000.0) -> float:
    """``--headroom 20%`` (or ``20``) -> 0.2; at most ``top`` percent."""
    m = _PERCENT.match(value)
    pct = float(m.group(1)) if m else -1.0
    if not m or not 0 <= pct <= top:
        raise BadOption(f"{option} {value!r}: give a percentage from 0% to {top:g}%, "
                        f"e.g. 20%")
    return pct / 100


def policy_at(path: str, *, required: bool) -> Policy | None:
    """The policy at ``path`` (a file or a drop-in directory), validated; None when it is
    not ``required`` (the table and JSON can do without its limits) and nothing is there."""
    from pathlib import Path

    from governor.policy import load_policy

    if not required and not Path(path).exists():
        return None
    return load_policy([path])


def policy_limits(policy: Policy) -> dict[str, dict[str, str]]:
    """``"tenant/group"`` -> the policy's values of the suggested files (kernel values)."""
    return {g.path: {f: v for f, v in g.limits.files() if f in FILES}
            for t in policy.tenants.values() for g in t.groups.values()}


def recommend_groups(database_url: str, *, settings: Settings, window: timedelta,
                     tenant: str | None = None, group: str | None = None,
                     policy: Policy | None = None, now: datetime | None = None,
                     ) -> list[Recommendation]:
    """One recommendation per group (of ``tenant``, or only ``group``) over the window
    ending ``now``: groups with samples, groups the store knows, and the policy's
    groups.  An unknown tenant or group is :class:`UnknownTenant` naming what exists."""
    if group is not None and tenant is None:
        raise BadOption(f"--group {group!r}: give its tenant too (--tenant)")
    end = now or datetime.now(UTC)
    start = end - window
    also = [] if policy is None else [(t.name, g) for t in policy.tenants.values()
                                      for g in t.groups]
    engine = connect(database_url)
    try:
        with database_errors(database_url, "read"):
            check_schema(engine)
            with session_factory(engine)() as session:
                recs = [recommend(h, settings) for h in read_histories(
                    session=session, start=start, end=end, tenant=tenant, group=group,
                    also=also, policy_limits=None if policy is None else policy_limits(policy))]
                known = {} if recs else known_groups(session=session, start=start)
    finally:
        engine.dispose()
    if tenant is not None and not recs:
        for t, g in also:
            known.setdefault(t, set()).add(g)
        where = "not in the policy and never sampled"
        if group is None or tenant not in known:
            raise UnknownTenant(tenant, where=where, known=sorted(known))
        raise UnknownTenant(tenant, group=group, where=where, known=sorted(known[tenant]))
    return sorted(recs, key=lambda r: (r.tenant, r.group))
