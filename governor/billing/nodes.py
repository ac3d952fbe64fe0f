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
