"""Rendering recommendations: a table for people (rich) and JSON for scripts (the drop-in
is :mod:`governor.recommend.dropin`'s)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TextIO

from rich.console import Console
from rich.table import Table

from governor.policy.units import format_size
from governor.recommend.rules import FILES, MIB, WORKING_SET_BASIS, Recommendation, Settings


def _shown(file: str, value: str | None) -> str:
    """A kernel value for people: sizes in K/M/G, cpu.max in cores."""
    if value is None:
        return "-"
    if file.startswith("memory.") and value.isdigit():
        return format_size(int(value)) if int(value) % MIB == 0 else \
            f"{int(value) / MIB:.1f}M"
    if file == "cpu.max":
        quota, _, period = value.partition(" ")
        if quota.isdigit() and period.isdigit() and int(period):
            return f"{int(quota) / int(period):g} cores"
    return value


def _pair(r: Recommendation, file: str) -> str:
    new = r.suggest.get(file)
    old = r.current.get(file)
    return "-" if new is None else \
        f"{'unset' if old is None else _shown(file, old)} -> {_shown(file, new)}"


def span(window: timedelta) -> str:
    """``7d``, ``36h``, ``90m``: the window in its largest whole unit."""
    secs = int(window.total_seconds())
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if secs % size == 0:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def _figures(f: Mapping[str, float | int | None]) -> str:
    parts: list[str] = []
    if f.get("working_set_p99") is not None:
        parts.append(f"ws p99 {int(f['working_set_p99'] or 0) / MIB:.1f}M "
                     f"peak {int(f['working_set_peak'] or 0) / MIB:.1f}M")
    if f.get("cpu_p95_cores") is not None:
        parts.append(f"cpu p95 {f['cpu_p95_cores']:.3f}")
    if f.get("throttled_ratio") is not None:
        parts.append(f"throttled {f['throttled_ratio']:.1%}")
    return "; ".join(parts)


def render(recs: Sequence[Recommendation], fmt: str, out: TextIO, *, window: timedelta,
           settings: Settings) -> None:
    """``table`` or ``json`` (field names stable: :meth:`Recommendation.as_dict`)."""
    if fmt == "json":
        json.dump({"window_seconds": int(window.total_seconds()),
                   "headroom": settings.headroom, "working_set_basis": WORKING_SET_BASIS,
                   "groups": [r.as_dict() for r in recs]}, out, indent=2, sort_keys=True)
        out.write("\n")
        return
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}")
    console = Console(file=out, width=160 if not out.isatty() else None)
    t = Table(title=f"recommendations over {span(window)} (working set: {WORKING_SET_BASIS}; "
                    f"headroom {settings.headroom:.0%})", title_justify="left")
    for col in ("group", "flags", "measured", *FILES):
        t.add_column(col)
    for r in recs:
        t.add_row(r.path, ", ".join(r.flags) or "ok", _figures(r.figures),
                  *(_pair(r, f) for f in FILES))
    console.print(t)
    for r in recs:
        for line in (*r.reasons, *r.notes):
            console.print(f"{r.path}: {line}", highlight=False, soft_wrap=True)
