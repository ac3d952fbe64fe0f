"""Failpoints: named spots where a test can make governor die, stall or fail on purpose.

Modelled on etcd's gofail and FreeBSD's fail(9): ``failpoint("store.write.before_commit")``
is placed at a spot whose crash behaviour matters (inside a transaction, between a commit
and the bookkeeping after it, in the middle of a policy apply), and does nothing unless the
environment variable ``GOVERNOR_FAILPOINTS`` arms it when the process starts::

    GOVERNOR_FAILPOINTS="enforce.apply.write=kill@5"       # SIGKILL self at the 5th hit
    GOVERNOR_FAILPOINTS="metering.sample.group=sleep(2)"   # stall 2 s at every hit
    GOVERNOR_FAILPOINTS="store.write.before_commit=raise@3;store.meter.before_commit=kill"

A term is ``kill``, ``sleep(SECONDS)`` or ``raise`` (a :class:`FailpointError`), optionally
followed by ``@N``: only the N-th hit of that failpoint in this process (1-based) fires;
without it every hit does.  Terms are separated by ``;``.  An unknown name or a malformed
term is an error at import (a typo must not quietly run a crash test without its crash).
The variable is read once, at import.  For tests only: never set it in production.

Disarmed, a failpoint is one call and one test of a module global against ``None``
(about 40 ns on the development machine: ``python -m timeit -s "from governor.failpoint
import failpoint" "failpoint('metering.sample.group')"``), small next to the dozen
syscalls per group of a sampling pass, its hottest site (about 110 us per group: 0.04% of
a 520-group pass on the unit tests' fake cgroupfs).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass

from governor.errors import GovernorError

ENV = "GOVERNOR_FAILPOINTS"

#: every failpoint placed in the code, and where (docs/operations.md lists them too)
NAMES: dict[str, str] = {
    "daemon.start": "governor/daemon/run.py Daemon.__init__: signal handlers installed and "
                    "the instance lock taken, before the start-up's set-up (database, driver)",
    "enforce.apply.write": "governor/enforce/apply.py: before each cgroupfs write or create "
                           "of a plan (policy apply, reload, reconcile)",
    "metering.sample.group": "governor/metering/sampler.py: after each group read in a "
                             "sampling pass",
    "store.write.before_commit": "governor/store/spool.py SpoolingWriter.submit: a pass's "
                                 "samples inserted, transaction not yet committed",
    "store.write.after_commit": "governor/store/spool.py SpoolingWriter.submit: a pass's "
                                "samples committed, before metering",
    "store.spool.after_commit": "governor/store/spool.py Spool.drain: a spooled batch "
                                "committed, before the journal records it as drained",
    "store.meter.before_commit": "governor/daemon/passes.py: interval usage, rollups and "
                                 "anchors written by meter(), transaction not yet committed",
}


class FailpointError(Exception):
    """Raised by a failpoint armed with ``raise``.

    Deliberately not a :class:`~governor.errors.GovernorError`: it stands for a failure
    nobody planned for, so the handlers of governor's own errors (a failed write becomes an
    outcome in governor/enforce/apply.py) must not catch it as one of theirs.
    """


class FailpointSpecError(GovernorError, ValueError):
    """A malformed ``GOVERNOR_FAILPOINTS``."""


@dataclass(frozen=True)
class Term:
    action: str                 # "kill", "sleep" or "raise"
    seconds: float = 0.0        # for sleep
    at: int | None = None       # fire only at this hit (1-based); None: every hit


_TERM = re.compile(r"(?P<action>kill|raise|sleep\((?P<secs>[0-9]*\.?[0-9]+)\))"
                   r"(?:@(?P<at>[1-9][0-9]*))?")


def parse(spec: str | None) -> dict[str, Term] | None:
    """``GOVERNOR_FAILPOINTS``'s value -> the armed failpoints (None when there are none)."""
    if spec is None or not spec.strip():
        return None
    armed: dict[str, Term] = {}
    for raw in spec.split(";"):
        part = raw.strip()
        if not part:
            continue
        name, eq, term = part.partition("=")
        name, term = name.strip(), term.strip()
        if not eq:
            raise FailpointSpecError(f"{ENV}: {part!r} is not NAME=TERM")
        if name not in NAMES:
            raise FailpointSpecError(f"{ENV}: unknown failpoint {name!r} "
                                     f"(known: {', '.join(sorted(NAMES))})")
        m = _TERM.fullmatch(term)
        if m is None:
            raise FailpointSpecError(f"{ENV}: {name}: bad term {term!r} "
                                     "(kill, raise or sleep(SECONDS), optionally @N)")
        action = m["action"].split("(")[0]
        armed[name] = Term(action, float(m["secs"] or 0), int(m["at"]) if m["at"] else None)
    return armed or None


_armed: dict[str, Term] | None = parse(os.environ.get(ENV))
_hits: dict[str, int] = {}
_lock = threading.Lock()


def armed(name: str) -> bool:
    """Whether ``GOVERNOR_FAILPOINTS`` armed failpoint ``name``: a loop that would call it
    for every item may pass no hook at all when not (issue #16: at 10,000 groups the
    sampling pass's 10,000 calls from C were 2.5% of the daemon's Python time)."""
    return _armed is not None and name in _armed


def failpoint(name: str) -> None:
    """Fire failpoint ``name`` if ``GOVERNOR_FAILPOINTS`` armed it; otherwise nothing."""
    if _armed is None:
        return
    _fire(name)


def _fire(name: str) -> None:
    assert _armed is not None
    term = _armed.get(name)
    if term is None:
        return
    with _lock:
        n = _hits[name] = _hits.get(name, 0) + 1
    if term.at is not None and n != term.at:
        return
    # straight to fd 2, unbuffered: the line must be out before a SIGKILL
    msg = f"failpoint {name} hit {n}: {term.action}"
    if term.action == "sleep":
        msg += f" {term.seconds}s"
    with contextlib.suppress(OSError, ValueError):
        os.write(sys.stderr.fileno(), (msg + "\n").encode())
    if term.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # not reached: SIGKILL is delivered before kill() returns to us
    elif term.action == "sleep":
        time.sleep(term.seconds)
    else:
        raise FailpointError(f"failpoint {name} (hit {n})")


def hits(name: str) -> int:
    """How many times failpoint ``name`` was reached while armed (0 when disarmed)."""
    return _hits.get(name, 0)
