"""A node's share of a bill (``governor bill --node``, the daemon's billed-cost gauge).

A tenant's invoice line sums a group's resource over every node, and is rounded once
(:mod:`.report`).  A node's bill takes, of each line, its share by cumulative rounding in
the order of the node names: the node ``k``-th in that order gets ``R(C_k) - R(C_{k-1})``,
where ``C_k`` is the line's integer quantity on the nodes up to and including ``k`` and
``R`` the invoice's rounding (quantities likewise at 9 decimals).  So the node bills of a
tenant add up **exactly** to its fleet bill (line by line, hence in total), and each node's
line is within one minor unit of its exact share -- the rule ``sliced_invoice`` already
follows for its rows.  Only the node filter: the billing rules are :mod:`.report`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select

from governor.store.tables import nodes as _NODES

if TYPE_CHECKING:
    from governor.store.db import Executor

Span = tuple[datetime, datetime]


def node_names(session: Executor) -> dict[int, str]:
    """Node id -> name, every node of the database."""
    return dict(session.execute(select(_NODES.c.id, _NODES.c.name)).tuples().all())


def share(per_node: Mapping[int, int], only: int | None,
          names: Mapping[int, str]) -> tuple[int, int]:
    """``(units of the nodes before ``only`` in name order, units of ``only``)`` of one
    line; ``only`` None: ``(0, every node's units)``, the fleet's line."""
    if only is None:
        return 0, sum(per_node.values())
    if len(per_node) == 1:   # one node's rows (every line of a single host)
        return 0, per_node.get(only, 0)
    before = 0
    for n in sorted(per_node, key=lambda n: (names.get(n, ""), n)):
        if n == only:
            return before, per_node[n]
        before += per_node[n]
    return before, 0


def widen(spans: dict[int, Span], node_id: int, a: datetime, b: datetime) -> None:
    """Widen the charge span of ``node_id`` to hold ``[a, b)``."""
    s = spans.get(node_id)
    spans[node_id] = (a, b) if s is None else (min(s[0], a), max(s[1], b))


def merged_span(spans: Mapping[int, Span], only: int | None) -> Span:
    """The charge span of ``only``'s line, or (None) of the fleet's: every node's."""
    if only is not None:
        return spans[only]
    return min(a for a, _ in spans.values()), max(b for _, b in spans.values())


@dataclasses.dataclass(slots=True)
class Quantities:
    """An invoice before pricing: ``(path, resource, price version index) -> node id ->``
    the integer quantity, and each node's charge span of it.  Sums over adjacent periods
    (cut on hour boundaries) add up (:meth:`merged`) to the sums over their union: the
    daemon's month-to-date gauge keeps the settled hours' in memory
    (:mod:`governor.billing.running`).  Made by
    :func:`governor.billing.report.invoice_quantities`."""

    qty: dict[tuple[str, str, int], dict[int, int]] = dataclasses.field(default_factory=dict)
    span: dict[tuple[str, str, int], dict[int, tuple[datetime, datetime]]] = \
        dataclasses.field(default_factory=dict)

    def add(self, key: tuple[str, str, int], node_id: int, value: int, a: datetime,
            b: datetime) -> None:
        per = self.qty.setdefault(key, {})
        per[node_id] = per.get(node_id, 0) + value
        widen(self.span.setdefault(key, {}), node_id, a, b)

    def merged(self, other: Quantities) -> Quantities:
        """A new one holding both (neither changed)."""
        out = Quantities({k: dict(v) for k, v in self.qty.items()},
                         {k: dict(v) for k, v in self.span.items()})
        for key, per in other.qty.items():
            spans = other.span[key]
            for node_id, value in per.items():
                a, b = spans[node_id]
                out.add(key, node_id, value, a, b)
        return out
