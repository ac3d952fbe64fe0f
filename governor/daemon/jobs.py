"""The daemon's scheduled jobs beside the sampling pass (:mod:`.passes`): the reconcile
(drift restored), retention, and the billed-cost gauge, each on its own interval and never
inside a pass; a failure is logged and the next run tries again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from governor.billing.running import RunningBills
    from governor.config import Config
    from governor.enforce.keeper import Enforcer
    from governor.store.gate import Database

log = logging.getLogger("governor.daemon")

#: how often retention runs (it is idempotent; a daily cadence would do)
RETENTION_INTERVAL = 3600.0
#: the billed-cost gauge is recomputed this often, by its own job (it reads the recent
#: hourly rollups, governor.billing.running: never part of a sampling pass)
COST_INTERVAL = 300.0


class Jobs:
    """The :class:`~governor.daemon.Daemon`'s reconcile, retention and cost jobs."""

    # what it uses of the daemon (made by Daemon.__init__ and Daemon._setup)
    cfg: Config
    db: Database
    scope: Callable[[], AbstractContextManager[Connection]]
    enforcer: Enforcer
    costs: dict[tuple[str, str], Any]
    running_bills: RunningBills

    def _reconcile(self) -> None:
        try:
            self.enforcer.reconcile()
        except Exception:
            log.exception("reconcile pass failed")

    def _update_costs(self) -> None:
        """The billed cost so far this month per tenant and currency (from rollups) of this
        node only (its share of the fleet's bill, governor.billing.nodes: the nodes' gauges
        add up to the fleet's bill): its own job, every COST_INTERVAL, never inside a
        pass; the gauge shows it from the next pass on.  The month's settled hours are
        summed once and kept (governor.billing.running), so an update reads the last
        hours' rollups, not the month's."""
        if not self.db.up:
            return  # the last costs stay; recomputed once the database answers
        pol = self.enforcer.policy
        if pol is None:
            return
        from governor.billing.history import with_recorded_prices

        now_dt = datetime.now(UTC).replace(microsecond=0)
        try:
            with self.scope() as session:
                self.costs = self.running_bills.bills(
                    session=session, policy=with_recorded_prices(pol, session),
                    digest=pol.digest, node=self.cfg.node, now=now_dt)
        except Exception:
            self.running_bills.invalidate()
            log.exception("cost gauge update failed")

    def _retention(self) -> None:
        from governor.store.service import apply_retention

        if not self.db.up:
            log.debug("retention skipped: the database is down")
            return
        try:
            with self.scope() as session:
                r = apply_retention(session=session, before=datetime.now(UTC) - timedelta(
                    seconds=self.cfg.retention_raw))
            log.info("retention", extra={"result": str(r)})
        except Exception:
            log.exception("retention failed")
