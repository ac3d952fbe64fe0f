"""A bounded, fsynced local spool for sample batches while the database is unreachable.

The spool is an append-only journal of JSON lines (one line per batch, fsynced after each
append) plus a small ``.done`` file holding how many lines were already drained (also
fsynced), so a crash while draining replays at most one batch -- which the store's unique
key makes harmless.  Batches drain in the order they were written; while the spool holds
anything, new batches are appended behind it, so the database always sees samples in order.

The bound is a number of *samples*.  A batch that does not fit is not written; a ``gap``
line (node, from, to, rows lost, reason) takes its place and becomes a row of the ``gaps``
table when the spool drains: losing data is never silent.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from governor.failpoint import failpoint
from governor.metering.sample import GroupSample, IoCounters
from governor.store.service import Incarnations, record_gap, record_samples

log = logging.getLogger(__name__)


def sample_to_json(s: GroupSample) -> dict[str, Any]:
    d = {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}
    d["wall"] = s.wall.isoformat()
    d["created"] = s.created.isoformat() if s.created is not None else None
    d["io"] = {k: dict(v) for k, v in s.io.items()}
    d["psi"] = dict(s.psi)
    return d


def sample_from_json(d: dict[str, Any]) -> GroupSample:
    d = dict(d)
    d["wall"] = datetime.fromisoformat(d["wall"])
    if d.get("created") is not None:
        d["created"] = datetime.fromisoformat(d["created"])
    d["io"] = {k: IoCounters(rbytes=v["rbytes"], wbytes=v["wbytes"], rios=v["rios"],
                             wios=v["wios"], dbytes=v["dbytes"])
               for k, v in d.get("io", {}).items()}
    return GroupSample(**d)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The journal at ``path`` (created mode 0600) holding at most ``max_samples`` samples."""

    def __init__(self, path: str | os.PathLike[str], *, max_samples: int) -> None:
        self.path = Path(path)
        self.done_path = self.path.with_name(self.path.name + ".done")
        self.max_samples = max_samples
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- reading -----------------------------------------------------------------------
    def _lines(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        with self.path.open("rb") as f:
            for raw in f:
                try:
                    out.append(json.loads(raw))
                except ValueError:
                    # a torn last line from a crash mid-append: that batch was never
                    # acknowledged to its caller, so it is not ours to count
                    log.warning("spool %s: skipping an unreadable (torn) line", self.path)
        return out

    def _done(self) -> int:
        try:
            return int(self.done_path.read_text() or 0)
        except FileNotFoundError:
            return 0

    def pending(self) -> list[dict[str, Any]]:
        """The entries not yet drained, oldest first."""
        return self._lines()[self._done():]

    def pending_samples(self) -> int:
        return sum(len(e["samples"]) for e in self.pending() if e["kind"] == "samples")

    def __bool__(self) -> bool:
        return bool(self.pending())

    # -- writing -----------------------------------------------------------------------
    def _append(self, entry: dict[str, Any]) -> None:
        new = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (json.dumps(entry, separators=(",", ":")) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            _fsync_dir(self.path.parent)

    def put(self, node: str, samples: Sequence[GroupSample], *, reason: str) -> bool:
        """Append a batch; when it does not fit, append a gap instead and return False."""
        if not samples:
            return True
        if self.pending_samples() + len(samples) > self.max_samples:
            walls = [s.wall for s in samples]
            self._append({"kind": "gap", "node": node, "from": min(walls).isoformat(),
                          "to": max(walls).isoformat(), "rows_lost": len(samples),
                          "reason": f"spool full ({self.max_samples} samples) while {reason}"})
            log.error("spool %s full: %d samples of %s lost (recorded as a gap)",
                      self.path, len(samples), node)
            return False
        self._append({"kind": "samples", "node": node,
                      "samples": [sample_to_json(s) for s in samples]})
        return True

    def _mark_done(self, n: int) -> None:
        tmp = self.done_path.with_name(self.done_path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, str(n).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.done_path)

    def entries(self) -> Iterator[tuple[int, dict[str, Any]]]:
        done = self._done()
        for i, e in enumerate(self._lines()):
            if i >= done:
                yield i, e

    def drain(self, session_scope: Callable[[], AbstractContextManager[Session]]) -> int:
        """Write every pending entry, each in its own transaction, in order; returns the
        number of entries drained.  Raises the database error if it fails again midway
        (what was drained stays drained)."""
        n = 0
        last = -1
        for i, e in self.entries():
            with session_scope() as session:
                if e["kind"] == "samples":
                    record_samples(session=session, node=e["node"],
                                   samples=[sample_from_json(s) for s in e["samples"]])
                else:
                    record_gap(session=session, node=e["node"],
                               from_ts=datetime.fromisoformat(e["from"]),
                               to_ts=datetime.fromisoformat(e["to"]),
                               reason=e["reason"], rows_lost=e["rows_lost"])
            failpoint("store.spool.after_commit")  # crash tests: replayed on restart
            self._mark_done(i + 1)
            last = i
            n += 1
        if last >= 0 or self.path.exists():
            self.path.unlink(missing_ok=True)
            self.done_path.unlink(missing_ok=True)
            _fsync_dir(self.path.parent)
        return n


class SpoolingWriter:
    """Writes sample batches to the database, or to the spool while it is unreachable.

    ``session_scope`` opens a session in a transaction that commits on success (for example
    :func:`governor.store.db.session_scope`).
    """

    def __init__(self, *, spool: Spool,
                 session_scope: Callable[[], AbstractContextManager[Session]]) -> None:
        self.spool = spool
        self.session_scope = session_scope
        self.incarnations = Incarnations()
        #: why the last batch was spooled (the database error's first line), None: stored
        self.last_error: str | None = None

    def submit(self, node: str, samples: Sequence[GroupSample]) -> str:
        """Store ``samples``; returns "stored", "spooled" or "gap"."""
        try:
            if self.spool:
                self.spool.drain(self.session_scope)
            with self.session_scope() as session:
                record_samples(session=session, node=node, samples=samples,
                               incarnations=self.incarnations)
                failpoint("store.write.before_commit")  # crash tests: rolled back
            failpoint("store.write.after_commit")  # crash tests: stored, not yet metered
            self.last_error = None
            return "stored"
        except DBAPIError as exc:
            self.incarnations.forget()
            # only "cannot reach the database" spools; a bad statement is a bug to raise
            if not (isinstance(exc, OperationalError) or exc.connection_invalidated):
                raise
            self.last_error = (str(exc.orig).strip().splitlines() or ["?"])[0]
            reason = f"database unreachable: {self.last_error}"
            return "spooled" if self.spool.put(node, samples, reason=reason) else "gap"
