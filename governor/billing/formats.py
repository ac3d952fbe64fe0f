"""Rendering usage reports and invoices: table (rich), csv and json; the FinOps FOCUS
format (``focus``, one of :data:`FORMATS`) is :mod:`governor.billing.focus`'s."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, TextIO

from rich.console import Console
from rich.table import Table

from governor.billing.generic import USAGE_COLUMNS
from governor.billing.report import Invoice, UsageReport

FORMATS: Final = ("table", "csv", "json", "focus")

_LINE_FIELDS: Final = ("tenant", "group", "resource", "quantity", "unit", "unit_price",
                       "amount", "currency", "charge_start", "charge_end")


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def _plain(v: Any) -> Any:
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, datetime):
        return _iso(v)
    return v


def invoice_rows(inv: Invoice) -> list[dict[str, Any]]:
    return [{"tenant": inv.tenant, "group": line.group, "resource": line.resource,
             "quantity": line.quantity, "unit": line.unit, "unit_price": line.unit_price,
             "amount": line.amount, "currency": inv.currency,
             "charge_start": line.charge_start, "charge_end": line.charge_end}
            for line in inv.lines]


def _csv(rows: Sequence[dict[str, Any]], columns: Sequence[str], out: TextIO) -> None:
    w = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _plain(v) for k, v in r.items()})


def render_invoices(invoices: Sequence[Invoice], fmt: str, out: TextIO) -> None:
    if fmt == "csv":
        _csv([r for inv in invoices for r in invoice_rows(inv)], _LINE_FIELDS, out)
    elif fmt == "focus":
        raise ValueError("the focus format is written from sliced invoices: "
                         "governor.billing.focus.render_focus")
    elif fmt == "json":
        doc = [{"tenant": inv.tenant, "plan": inv.plan, "currency": inv.currency,
                "memory_basis": inv.memory_basis, "start": _iso(inv.start),
                "end": _iso(inv.end), "total": str(inv.total),
                "lines": [{k: _plain(v) for k, v in r.items()} for r in invoice_rows(inv)]}
               for inv in invoices]
        json.dump(doc, out, indent=2)
        out.write("\n")
    elif fmt == "table":
        console = Console(file=out, width=120 if not out.isatty() else None)
        for inv in invoices:
            t = Table(title=f"{inv.tenant}: {_iso(inv.start)} to {_iso(inv.end)} "
                            f"(plan {inv.plan}, {inv.currency})")
            for col, justify in (("group", "left"), ("resource", "left"),
                                 ("quantity", "right"), ("unit", "left"),
                                 ("unit price", "right"), ("amount", "right")):
                t.add_column(col, justify=justify)  # type: ignore[arg-type]
            for line in inv.lines:
                t.add_row(line.group, line.resource, str(line.quantity.normalize()),
                          line.unit, str(line.unit_price), str(line.amount))
            if not inv.lines:
                t.add_row("(no usage in this period)", "", "", "", "", "")
            t.add_section()
            t.add_row("total", "", "", "", "", f"{inv.total} {inv.currency}")
            console.print(t)
    else:
        raise ValueError(f"unknown format {fmt!r}")


def render_usage(report: UsageReport, fmt: str, out: TextIO) -> None:
    # storage_gib_hours (issue #19) last: the columns before it keep their places in CSV
    # then the registered controllers' quantities (hugetlb_gib_hours), likewise after
    columns = (report.by, "tenant", "cpu_core_hours", "memory_gib_hours", "io_read_gib",
               "io_write_gib", "oom_kills", "storage_gib_hours", *USAGE_COLUMNS.values())
    rows = [{report.by: r.key, "tenant": r.tenant, "cpu_core_hours": r.cpu_core_hours,
             "memory_gib_hours": r.memory_gib_hours, "io_read_gib": r.io_read_gib,
             "io_write_gib": r.io_write_gib, "oom_kills": r.oom_kills,
             "storage_gib_hours": r.storage_gib_hours, **r.values} for r in report.rows]
    if fmt in ("csv", "focus"):
        if fmt == "focus":
            raise ValueError("the focus format is for bills (it needs prices): use csv or json")
        _csv(rows, columns, out)
    elif fmt == "json":
        json.dump({"by": report.by, "start": _iso(report.start), "end": _iso(report.end),
                   "rows": [{k: _plain(v) for k, v in r.items()} for r in rows]}, out, indent=2)
        out.write("\n")
    elif fmt == "table":
        # 120 columns, and room for the registered controllers' own
        wide = 120 + 40 * len(USAGE_COLUMNS)
        console = Console(file=out, width=wide if not out.isatty() else None)
        t = Table(title=f"usage by {report.by}: {_iso(report.start)} to {_iso(report.end)}")
        for c in columns:
            t.add_column(c, justify="left" if c in (report.by, "tenant") else "right")
        for r in rows:
            t.add_row(*(str(_plain(r[c])) for c in columns))
        if not rows:
            t.add_row("(no usage in this period)", *[""] * (len(columns) - 1))
        console.print(t)
    else:
        raise ValueError(f"unknown format {fmt!r}")


def render_to_string(invoices: Sequence[Invoice], fmt: str) -> str:
    buf = io.StringIO()
    render_invoices(invoices, fmt, buf)
    return buf.getvalue()
