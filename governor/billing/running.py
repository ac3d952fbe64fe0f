"""The month-to-date bill of each tenant on this node, kept up to date cheaply: the
daemon's billed-cost gauge (``governor_billed_cost``, issue #16).

A whole month's invoice reads every hourly rollup of the month: about 0.7 s of a host
core at 1,000 groups late in a month (``bench/bill.py``), every five minutes, more than
the sampler's own reads cost in that time.  :class:`RunningBills` reads each hour once:
the quantities of the month's *settled* hours (those ended at least :data:`SETTLE` ago,
which no pass of this daemon writes into any more) are summed once and kept in memory
(:class:`~governor.billing.nodes.Quantities`, the invoice before pricing); each update
adds the hours settled since and reads only the recent ones.  The bill is then priced
from the sum by the invoice's own rules (:func:`~governor.billing.report.priced`): the
same lines, rounding and node share, so the gauge equals ``governor bill --node`` for the
month so far (quantities over adjacent periods cut on an hour boundary add up exactly;
tests/unit/test_billing_running.py compares the two).

What could change a settled hour: this node's spool drained or its store's catch-up meter
(the daemon calls :meth:`RunningBills.invalidate`), a new policy or price history (its
digest is part of the key), another node of a fleet draining its own spool late (bounded
by :data:`FULL_EVERY`: the settled sum is read again from scratch that often), or a new
month.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Final

from governor.billing.nodes import Quantities
from governor.billing.plans import PolicyLike, plan_for
from governor.billing.report import invoice_quantities, known_tenants, priced
from governor.billing.totals import hour_floor
from governor.errors import GovernorError
from governor.store.service import node_id_named

if TYPE_CHECKING:
    from governor.store.db import Executor

#: an hour is settled this long after its end: the daemon writes its metered rows every
#: few passes, so rows of an hour keep arriving for a minute or two after it
HOUR: Final = timedelta(hours=1)
SETTLE: Final = HOUR
#: seconds between two full reads of the settled hours (a fleet's late rows show then)
FULL_EVERY: Final = 3600.0


class RunningBills:
    """Each tenant's bill for this month so far on one node (see the module docs)."""

    def __init__(self, *, full_every: float = FULL_EVERY,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.full_every = full_every
        self._monotonic = monotonic
        #: what the settled sums depend on: the month, the policy's digest and prices
        self._key: tuple[datetime, str, str] | None = None
        #: tenant -> (end of the settled hours summed, from the month's start; their sum)
        self._settled: dict[str, tuple[datetime, Quantities]] = {}
        self._full_at = 0.0
        #: full reads of the settled hours so far, and hours read into a settled sum
        self.full_reads = 0
        self.hours_read = 0

    def invalidate(self) -> None:
        """Settled hours may have changed (a spool drained, a catch-up meter): read them
        again on the next update."""
        self._key = None

    def bills(self, *, session: Executor, policy: PolicyLike, digest: str, node: str,
              now: datetime) -> dict[tuple[str, str], Decimal]:
        """``(tenant, currency) -> total`` of each priced tenant's bill on ``node`` for
        ``[start of now's month, now)``, as ``governor bill --node`` gives it; a tenant
        it refuses (no plan, no data yet) is left out, and every tenant while ``node`` has
        no rows yet."""
        month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        if now <= month:
            return {}
        try:
            only = node_id_named(session=session, name=node)
        except GovernorError:
            return {}
        settled_to = max(month, hour_floor(now - SETTLE))
        prices = repr([(name, policy.plans[name]) for name in sorted(policy.plans)])
        key = (month, digest, prices)
        if key != self._key or self._monotonic() - self._full_at >= self.full_every:
            self._key, self._settled = key, {}
            self._full_at = self._monotonic()
            self.full_reads += 1
        known = known_tenants(session)
        out: dict[tuple[str, str], Decimal] = {}
        for name in sorted(policy.tenants):
            since, settled = self._settled.get(name) or (month, Quantities())
            if settled_to < since:   # the clock went back: from the start
                since, settled = month, Quantities()
            try:
                plan = plan_for(policy, name, known_tenants=known)
                if settled_to > since:
                    settled = settled.merged(invoice_quantities(
                        session=session, plan=plan, tenant=name, start=since,
                        end=settled_to))
                    self.hours_read += int((settled_to - since) / HOUR)
                    since = settled_to
                recent = invoice_quantities(session=session, plan=plan, tenant=name,
                                            start=since, end=now)
                bill = priced(session=session, plan=plan, tenant=name, start=month, end=now,
                              quantities=settled.merged(recent), only=only)
            except GovernorError:
                self._settled.pop(name, None)
                continue  # no plan, or no data for this tenant yet: no series
            self._settled[name] = (since, settled)
            out[(name, bill.currency)] = bill.total
        return out
