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

import contextlib
import dataclasses
import errno
import json
import logging
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import DBAPIError, OperationalError

from governor.failpoint import failpoint
from governor.metering.meter import IncKey
from governor.metering.sample import GroupSample, IoCounters
from governor.security import StateDir
from governor.store.service import Incarnations, record_gap, record_samples, store_samples

if TYPE_CHECKING:
    from governor.store.db import Executor

log = logging.getLogger(__name__)


def sample_to_json(s: GroupSample) -> dict[str, Any]:
    d = {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}
    d["wall"] = s.wall.isoformat()
    d["created"] = s.created.isoformat() if s.created is not None else None
    d["io"] = {k: dict(v) for k, v in s.io.items()}
    d["psi"] = dict(s.psi)
    d["values"] = None if s.values is None else dict(s.values)
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


#: the head of a journal line as :meth:`Spool.put` writes it (kind, then the sample count)
_HEAD = re.compile(rb'\{"kind":"(samples|gap)"(?:,"n":(\d+))?[,}]')


def write_all(fd: int, data: bytes, write: Callable[[int, memoryview], int] = os.write
              ) -> None:
    """Write all of ``data``: a short write is continued, a write of nothing is ENOSPC
    (POSIX: a regular file returns short only when the disk or the file size limit is
    reached)."""
    view = memoryview(data)
    while view:
        n = write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


#: the errnos of a failed spool write that are exported from 0 (a full disk, a quota, a
#: failing disk); any other appears when it first happens
WRITE_ERRNOS = ("ENOSPC", "EDQUOT", "EIO")

class Spool:
    """The journal at ``path`` (created mode 0600) holding at most ``max_samples`` samples.

    Its directory is opened as a :class:`governor.security.StateDir` (checked, never
    through a symlink) and its files relative to it.  The file is read **once** per
    :meth:`drain`, a line at a time: memory holds one batch, never the journal; how many
    entries and samples are pending is counted once (at the first question) and kept up
    to date by :meth:`put` and :meth:`drain` (issue #15 item 8).

    Every write is checked (issue #15 item 7): a short write is continued, and a batch
    that cannot be written (ENOSPC, EDQUOT, EIO...) is cut from the file (no torn line
    left behind) and becomes a *gap* kept in memory -- written to the journal when it
    takes writes again, or stored when it drains -- logged once with the path and errno
    and counted in :attr:`write_errors` (``governor_spool_write_errors_total{errno}``).
    """

    #: the ``os.write`` used (tests put a fake here for short writes and a full disk)
    write: Callable[[int, memoryview], int] = staticmethod(os.write)

    def __init__(self, path: str | os.PathLike[str], *, max_samples: int) -> None:
        self.path = Path(path)
        self.done_path = self.path.with_name(self.path.name + ".done")
        self.max_samples = max_samples
        self._dir: StateDir | None = None
        #: (entries, samples) pending in the file, None: not counted yet
        self._counts: tuple[int, int] | None = None
        #: gaps not yet in the file (it could not be written), oldest first
        self.lost: list[dict[str, Any]] = []
        #: failed writes by errno name, since start
        #: by errno name; the usual ones from 0, so the exported counter exists before the
        #: first failure and ``increase()`` sees it (an alert rule watches it)
        self.write_errors: Counter[str] = Counter(dict.fromkeys(WRITE_ERRNOS, 0))
        self._failing: str | None = None

    @property
    def dir(self) -> StateDir:
        if self._dir is None:
            self._dir = StateDir(self.path.parent)
        return self._dir

    # -- reading -----------------------------------------------------------------------
    def _done(self) -> int:
        try:
            fd = self.dir.open(self.done_path.name, os.O_RDONLY)
        except FileNotFoundError:
            return 0
        try:
            return int(os.read(fd, 64) or 0)
        finally:
            os.close(fd)

    def entries(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(line number, entry)`` of the entries not yet drained, oldest first, read
        from the file a line at a time (drained lines are skipped unparsed)."""
        done = self._done()
        try:
            fd = self.dir.open(self.path.name, os.O_RDONLY)
        except FileNotFoundError:
            return
        with os.fdopen(fd, "rb") as f:
            for i, raw in enumerate(f):
                if i < done:
                    continue
                try:
                    entry = json.loads(raw)
                except ValueError:
                    # a torn last line from a crash mid-append: that batch was never
                    # acknowledged to its caller, so it is not ours to count
                    log.warning("spool %s: skipping an unreadable (torn) line", self.path)
                    continue
                yield i, entry

    def pending(self) -> list[dict[str, Any]]:
        """The entries not yet drained, oldest first (the gaps held in memory last)."""
        return [e for _, e in self.entries()] + list(self.lost)

    def _count(self) -> tuple[int, int]:
        """(entries, samples) pending, counted once from the file: each line's head
        (``{"kind":"samples","n":N,``) is enough, no line is parsed whole.  A torn last
        line (a crash mid-append: never acknowledged) is cut off here, before anything is
        appended behind it."""
        if self._counts is not None:
            return self._counts
        done = self._done()
        entries = samples = 0
        try:
            fd = self.dir.open(self.path.name, os.O_RDWR)
        except FileNotFoundError:
            self._counts = (0, 0)
            return self._counts
        with os.fdopen(fd, "r+b") as f:
            end = 0
            for i, raw in enumerate(f):
                if not raw.endswith(b"\n"):
                    log.warning("spool %s: cutting off a torn last line (%d bytes) left by "
                                "a crash mid-append", self.path, len(raw))
                    f.truncate(end)
                    os.fsync(f.fileno())
                    break
                end += len(raw)
                if i < done:
                    continue
                head = _HEAD.match(raw)
                if head is not None and (head[1] == b"gap" or head[2] is not None):
                    entries += 1
                    samples += int(head[2] or 0)
                    continue
                try:  # written by an older governor (no "n"), or not ours
                    entry = json.loads(raw)
                except ValueError:
                    log.warning("spool %s: skipping an unreadable line", self.path)
                    continue
                entries += 1
                samples += len(entry["samples"]) if entry["kind"] == "samples" else 0
        self._counts = (entries, samples)
        return self._counts

    def pending_samples(self) -> int:
        return self._count()[1]

    def __bool__(self) -> bool:
        return bool(self._count()[0] or self.lost)

    # -- writing -----------------------------------------------------------------------
    def _append(self, entry: dict[str, Any]) -> None:
        """Append one line and fsync it, or raise the OSError with the file as it was."""
        data = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        new = not self.dir.exists(self.path.name)
        fd = self.dir.open(self.path.name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            size = os.fstat(fd).st_size
            try:
                write_all(fd, data, self.write)
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)  # no torn line: the batch was not stored
                raise
        finally:
            os.close(fd)
        if new:
            self.dir.fsync()

    def _lose(self, exc: OSError, node: str, samples: Sequence[GroupSample],
              reason: str) -> None:
        """The batch could not be written: keep a gap for it in memory, log once, count."""
        name = _errno_name(exc)
        self.write_errors[name] += 1
        walls = [s.wall for s in samples]
        why = f"spool {self.path} not writable ({name}: {exc.strerror}) while {reason}"
        last = self.lost[-1] if self.lost else None
        if last is not None and last["node"] == node and last["reason"] == why:
            last["to"] = max(walls).isoformat()
            last["rows_lost"] += len(samples)
        else:
            self.lost.append({"kind": "gap", "node": node, "from": min(walls).isoformat(),
                              "to": max(walls).isoformat(), "rows_lost": len(samples),
                              "reason": why})
        if self._failing != name:
            self._failing = name
            log.error("spool %s cannot be written (%s: %s): samples are lost until it can, "
                      "recorded as a gap", self.path, name, exc.strerror,
                      extra={"path": str(self.path), "errno": name})

    def _flush_lost(self) -> None:
        """Write the gaps held in memory to the journal (in order, before newer entries)."""
        while self.lost:
            self._append(self.lost[0])
            self.lost.pop(0)
            entries, samples = self._count()
            self._counts = (entries + 1, samples)

    def put(self, node: str, samples: Sequence[GroupSample], *, reason: str) -> bool:
        """Append a batch; when it does not fit, or cannot be written, a gap takes its
        place and the answer is False."""
        if not samples:
            return True
        try:
            entries, pending = self._count()
            full = pending + len(samples) > self.max_samples
            if full:
                walls = [s.wall for s in samples]
                entry = {"kind": "gap", "node": node, "from": min(walls).isoformat(),
                         "to": max(walls).isoformat(), "rows_lost": len(samples),
                         "reason": f"spool full ({self.max_samples} samples) while {reason}"}
            else:
                # "n" right after "kind": _count reads it from the line's head
                entry = {"kind": "samples", "n": len(samples), "node": node,
                         "samples": [sample_to_json(s) for s in samples]}
            self._flush_lost()
            self._append(entry)
        except OSError as exc:  # ENOSPC, EDQUOT, EIO, EROFS...: the disk cannot take it
            self._lose(exc, node, samples, reason)
            return False
        if self._failing is not None:
            log.warning("spool %s writable again", self.path, extra={"path": str(self.path)})
            self._failing = None
        entries, pending = self._count()
        self._counts = (entries + 1, pending + (0 if full else len(samples)))
        if full:
            log.error("spool %s full: %d samples of %s lost (recorded as a gap)",
                      self.path, len(samples), node)
            return False
        return True

    def _mark_done(self, n: int) -> None:
        """Note that ``n`` lines are drained.  Best effort: if it cannot be written, a
        restart replays those lines, which the store's unique keys make harmless."""
        tmp = self.done_path.name + ".tmp"
        try:
            fd = self.dir.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                write_all(fd, str(n).encode(), self.write)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.dir.replace(tmp, self.done_path.name)
        except OSError as exc:
            log.warning("spool %s: drained lines not noted (%s: %s): a restart replays "
                        "them, harmlessly", self.path, _errno_name(exc), exc.strerror)

    def drain(self, session_scope: Callable[[], AbstractContextManager[Executor]], *,
              max_entries: int | None = None, node: str | None = None) -> int:
        """Write the pending entries, each in its own transaction, in order (the journal
        read once, a line at a time), then the gaps held in memory; returns the number of
        entries drained.  With ``max_entries`` at most that many are written (the daemon
        drains in steps, between its passes); the files go once everything is drained.
        Raises the database error if it fails again midway (what was drained stays
        drained).  ``node``: the daemon's node, whose spool this is: entries spooled under
        another name (the host renamed while the database was down) are stored as this
        node's (its row, found by the node uid the database gate claimed: issue #18)."""
        n = 0
        entries, samples = self._count()
        for i, e in self.entries():
            if max_entries is not None and n >= max_entries:
                return n
            with session_scope() as session:
                _store(session, _as_node(e, node))
            failpoint("store.spool.after_commit")  # crash tests: replayed on restart
            self._mark_done(i + 1)
            n += 1
            entries -= 1
            samples -= len(e["samples"]) if e["kind"] == "samples" else 0
            self._counts = (max(entries, 0), max(samples, 0))
        while self.lost:
            if max_entries is not None and n >= max_entries:
                return n
            with session_scope() as session:
                _store(session, _as_node(self.lost[0], node))
            self.lost.pop(0)
            n += 1
        self._counts = (0, 0)
        if self.dir.exists(self.path.name) or self.dir.exists(self.done_path.name):
            self.dir.unlink(self.path.name)
            self.dir.unlink(self.done_path.name)
            self.dir.fsync()
        return n


def _as_node(e: dict[str, Any], node: str | None) -> dict[str, Any]:
    """Entry ``e`` as ``node``'s (None: as spooled)."""
    if node is None or e["node"] == node:
        return e
    e = {**e, "node": node}
    if e["kind"] == "samples":
        e["samples"] = [{**s, "node": node} for s in e["samples"]]
    return e


def _store(session: Executor, e: dict[str, Any]) -> None:
    if e["kind"] == "samples":
        record_samples(session=session, node=e["node"],
                       samples=[sample_from_json(s) for s in e["samples"]])
    else:
        record_gap(session=session, node=e["node"], from_ts=datetime.fromisoformat(e["from"]),
                   to_ts=datetime.fromisoformat(e["to"]), reason=e["reason"],
                   rows_lost=e["rows_lost"])


class SpoolingWriter:
    """Writes sample batches to the database, or to the spool while it is unreachable.

    ``session_scope`` opens a session in a transaction that commits on success (for example
    :func:`governor.store.db.session_scope`).

    A pass never drains the spool (a backlog of hours would hold it for minutes): while
    the spool holds anything, new batches go behind it ("queued"), in order, and
    :meth:`drain` -- the daemon's own job, between passes -- writes the backlog a few
    batches at a time.  :attr:`lock` serialises the two (and the daemon's metering
    write): the database sees samples in time order.
    """

    def __init__(self, *, spool: Spool,
                 session_scope: Callable[[], AbstractContextManager[Executor]],
                 node: str | None = None) -> None:
        self.spool = spool
        #: the daemon's node: its spool's entries are stored as this node's (Spool.drain)
        self.node = node
        self.session_scope = session_scope
        self.incarnations = Incarnations()
        #: why the last batch was spooled (the database error's first line), None: stored
        self.last_error: str | None = None
        #: the node id and the group id of each sample of the last batch stored
        self.node_id = 0
        self.ids: dict[IncKey, int] = {}
        self.lock = threading.RLock()

    def submit(self, node: str, samples: Sequence[GroupSample]) -> str:
        """Store ``samples``; returns "stored", "queued" (behind the spool's backlog, which
        :meth:`drain` writes), "spooled" (the database is unreachable) or "gap" (the spool
        could not take them)."""
        with self.lock:
            if self.spool:
                return "queued" if self.spool.put(
                    node, samples, reason="behind the spool's backlog") else "gap"
            try:
                with self.session_scope() as session:
                    self.node_id, self.ids = store_samples(
                        session=session, node=node, samples=samples,
                        incarnations=self.incarnations)
                    failpoint("store.write.before_commit")  # crash tests: rolled back
                failpoint("store.write.after_commit")  # crash tests: stored, not yet metered
                self.last_error = None
                return "stored"
            except DBAPIError as exc:
                self.incarnations.forget()
                self.ids = {}
                # only "cannot reach the database" spools; a bad statement is a bug to raise
                if not (isinstance(exc, OperationalError) or exc.connection_invalidated):
                    raise
                self.last_error = (str(exc.orig).strip().splitlines() or ["?"])[0]
                reason = f"database unreachable: {self.last_error}"
                return "spooled" if self.spool.put(node, samples, reason=reason) else "gap"

    def drain(self, *, max_entries: int | None = None) -> int:
        """Write up to ``max_entries`` batches of the backlog (all: ``None``), in order;
        returns how many.  Raises the database error if it fails (what was written stays
        written)."""
        with self.lock:
            if not self.spool:
                return 0
            try:
                return self.spool.drain(self.session_scope, max_entries=max_entries,
                                        node=self.node)
            except DBAPIError:
                self.incarnations.forget()
                raise
