"""``governor run``: one process that wires every piece to APScheduler and signals.

Enforcement needs no database (:mod:`governor.store.gate`): with the database unreachable or
at another schema the policy is applied, processes are placed, samples spool locally and
applied policies (with their price plans) and OOM events wait in memory; each sampling pass
tries the database again, and once it answers with the right schema everything waiting is
stored, in order.  ``/healthz``, ``governor_database_up`` and the sd_notify ``STATUS=`` say
"degraded" meanwhile.

* :mod:`.run` -- the :class:`Daemon`: set-up, start-up order, the main loop, reload, stop;
* :mod:`.passes` -- the sampling pass: read, store or spool, meter, publish; the spool's
  drain; the health it reports;
* :mod:`.jobs` -- the other scheduled jobs: reconcile, retention, the cost gauge;
* :mod:`.wake` -- signals, the wake pipe and the policy watch that end the loop's wait;
* :mod:`.deferred` -- applied policies and OOM events waiting for the database;
* :mod:`.startup` -- favordynmods, keep_warm, the drift watch: start-up steps on their own;
* :mod:`.heap` -- the daemon's memory: malloc arenas, the frozen start-up heap, trims.
"""

from governor.daemon.deferred import DeferredSink, PolicyRecorder
from governor.daemon.heap import GC_YOUNG, limit_arenas, settle_heap, trim_heap
from governor.daemon.run import SWITCH_INTERVAL, Daemon
from governor.daemon.startup import apply_favordynmods

__all__ = ["GC_YOUNG", "SWITCH_INTERVAL", "Daemon", "DeferredSink", "PolicyRecorder",
           "apply_favordynmods", "limit_arenas", "settle_heap", "trim_heap"]
