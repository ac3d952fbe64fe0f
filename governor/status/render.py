"""Rows as a rich table (``status --format table`` and each frame of ``top``); pure.

Units: CPU in % of one core (150 = 1.5 cores busy), memory and the writable layers of
containers from images (STORAGE) in IEC units (KiB, MiB, GiB), IO in bytes per second, a
kernel ``max`` shown as ∞, a value not available (controller not enabled, no container
storage measured) as ``-``, a gone group as ``gone`` with no figures.
"""

from __future__ import annotations

from rich import box
from rich.table import Table
from rich.text import Text

from governor.cgroupfs.parse import Limit
from governor.controllers import registry
from governor.controllers.base import Column
from governor.status.view import Row, SortKey

INFINITY = "∞"
MISSING = "-"
#: the keys of ``top`` and the sort each selects
KEYS: dict[str, SortKey] = {"c": "cpu", "m": "memory", "i": "io", "p": "pids", "n": "name"}


def human_bytes(n: float | None) -> str:
    if n is None:
        return MISSING
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    raise AssertionError("unreachable")


def limit_bytes(v: Limit | None) -> str:
    if v is None:
        return MISSING
    return INFINITY if v == "max" else human_bytes(v)


def limit_count(v: Limit | None) -> str:
    if v is None:
        return MISSING
    return INFINITY if v == "max" else str(v)


def _rate(v: float | None) -> str:
    return MISSING if v is None else f"{human_bytes(v)}/s"


def _cpu(r: Row) -> str:
    cap = ("" if r.cpu_max_cores in (None, "max")
           else f" /{float(r.cpu_max_cores) * 100:.0f}")
    if r.cpu_percent is None:
        return (MISSING if r.state != "new" else "new") + cap
    return f"{r.cpu_percent:.1f}{cap}"


def _columns(r: Row, extra: tuple[Column, ...]) -> list[str | None]:
    have = dict(r.columns)
    return [have.get(col.json) for col in extra]


def table(rs: list[Row], *, sort: SortKey, title: str | None = None) -> Table:
    """The table of ``rs`` (already sorted); the column sorted on is marked with ▼."""
    t = Table(title=title, title_justify="left", expand=False, pad_edge=False,
              header_style="bold", box=box.SIMPLE_HEAD)
    mark = {k: (" ▼" if k == sort else "") for k in ("cpu", "memory", "io", "pids", "name")}
    t.add_column("TENANT/GROUP" + mark["name"], no_wrap=True)
    t.add_column("CPU%" + mark["cpu"], justify="right", no_wrap=True)
    t.add_column("MEMORY" + mark["memory"], justify="right", no_wrap=True)
    t.add_column("MAX", justify="right", no_wrap=True)
    t.add_column("HIGH", justify="right", no_wrap=True)
    t.add_column("SWAP", justify="right", no_wrap=True)
    t.add_column("STORAGE", justify="right", no_wrap=True)
    t.add_column("IO READ" + mark["io"], justify="right", no_wrap=True)
    t.add_column("IO WRITE", justify="right", no_wrap=True)
    t.add_column("PIDS" + mark["pids"], justify="right", no_wrap=True)
    t.add_column("OOM KILLS", justify="right", no_wrap=True)
    extra = registry.columns()   # the registered controllers' (CPUS, MEMS)
    for col in extra:
        t.add_column(col.header, justify="right", no_wrap=True)
    for r in rs:
        name = Text(r.tenant, style="bold") if r.group is None else Text(f"  {r.group}")
        if r.state == "gone":
            t.add_row(name, Text("gone", style="dim"), *([""] * (9 + len(extra))),
                      style="dim")
            continue
        swap = human_bytes(r.swap_current_bytes)
        if r.swap_max_bytes is not None:
            swap += f" /{limit_bytes(r.swap_max_bytes)}"
        pids = (MISSING if r.pids_current is None
                else f"{r.pids_current}/{limit_count(r.pids_max)}")
        oom = MISSING if r.oom_kills is None else str(r.oom_kills)
        if r.oom_kills_interval:
            oom += f" (+{r.oom_kills_interval})"
        t.add_row(name, _cpu(r), human_bytes(r.memory_current_bytes),
                  limit_bytes(r.memory_max_bytes), limit_bytes(r.memory_high_bytes), swap,
                  human_bytes(r.storage_bytes), _rate(r.io_read_bytes_per_s),
                  _rate(r.io_write_bytes_per_s), pids,
                  Text(oom, style="red") if r.oom_kills_interval else oom,
                  *(text or MISSING for text in _columns(r, extra)))
    if not rs:
        t.add_row(Text("(no tenants below the subtree)", style="dim"),
                  *([""] * (10 + len(extra))))
    return t
