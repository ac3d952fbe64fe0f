"""The sampler's fast reader: file descriptors kept open, values re-read with pread.

kernfs seq files regenerate their content when read from offset 0, so
``os.pread(fd, n, 0)`` on a descriptor opened once returns fresh values on every call
(one syscall per file per pass instead of open+read+close).  When a group is removed its
open files answer ENODEV: the group is *gone* (:class:`GroupGone`), its counters are not
zero.  A file that does not exist in a live group (controller not enabled, or a kernel
without ``memory.peak``) reads as ``None``: missing is not zero either.  A file whose text
cannot be taken (not the kernel's format, not UTF-8, larger than :data:`MAX_FILE`) raises
:class:`StatFileError` naming the group, the file and the reason: the sampler skips that
group's sample and counts it, the other groups are read as usual (issue #15, item 2).

This module only reads and parses (the "reader" layer of below): rates and usage are
derived elsewhere (``governor.metering``) from pairs of these raw values.

The hot path has an optional C accelerator, ``governor.cgroupfs._fastread`` (built from
``_fastread.c`` by ``pip install``; see setup.py): the preads of a group's cached
descriptors into one reused buffer and the parsing of the kernel's exact layouts, giving
the same :class:`GroupStats` as the Python code below (tests/unit/test_fastread.py runs
both).  Without it, or with ``GOVERNOR_PURE_PYTHON=1`` in the environment, the Python path
runs.  :data:`ACCELERATED` says which one is in use.  The C sampling pass
(``governor.metering._fastsample``) reads through :attr:`StatReader.fast_read` and
:attr:`StatReader.entries`, this module's public face for it.
"""

from __future__ import annotations

import errno
import os
import resource
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.parse import (
    FlatKeyedBytes,
    Limit,
    ParseError,
    Psi,
    PsiLine,
    parse_int_bytes,
    parse_io_stat_bytes,
    parse_limit,
    parse_psi_bytes,
)
from governor.controllers import registry
from governor.errors import CgroupError, GovernorError, GroupGone

_fastread: types.ModuleType | None
try:
    from governor.cgroupfs import _fastread
except ImportError:  # not built (no compiler at install time): the pure-Python path
    _fastread = None

_BUF = 65536  # every stat file we read is well below this (memory.stat ~ 1.5 KiB)
#: the most a stat file may hold: a read that fills the buffer is done again into a bigger
#: one (io.stat grows with the devices) up to this; a file this large is an error, never
#: read truncated (in the C accelerator too)
MAX_FILE = 1 << 20


class StatFileError(CgroupError):
    """A group's stat file whose text cannot be taken as a value: ``reason`` is ``parse``
    (not the kernel's format, a truncated line included), ``encoding`` (not UTF-8) or
    ``too_large`` (:data:`MAX_FILE` bytes or more).  ``value`` holds the start of the text.
    The group is alive: this is neither :class:`GroupGone` nor a zero."""

    REASONS = ("parse", "encoding", "too_large")

    def __init__(self, path: str, file: str, reason: str, data: bytes, why: str) -> None:
        self.op = "read"
        self.path = path
        self.file = file
        self.errno = 0
        self.reason = reason
        self.value = data[:200].decode("utf-8", "backslashreplace")
        self.hint = why
        GovernorError.__init__(  # not CgroupError's: there is no errno to name
            self, f"read {os.path.join(path, file)}: {why} ({reason}); the group's sample is "
            f"skipped until the file reads right: {self.value!r}")


def _why(e: ValueError) -> tuple[str, str]:
    """(reason, what went wrong) of a parser's error"""
    if isinstance(e, UnicodeDecodeError):
        return "encoding", f"not UTF-8 at byte {e.start}"
    if isinstance(e, ParseError):
        return "parse", f"not the kernel's {e.fmt} format: {e.why}"
    return "parse", str(e)


def _whole(fd: int, data: bytes) -> bytes | None:
    """``data`` (a pread of ``_BUF`` at 0) or, when it filled the buffer, the whole file
    read again into bigger ones; None when it holds :data:`MAX_FILE` bytes or more."""
    size = _BUF
    while len(data) == size:
        if size >= MAX_FILE:
            return None
        size = min(size * 8, MAX_FILE)
        data = os.pread(fd, size, 0)
    return data

#: files read on every pass: the first-wave controllers' ``pass_files``
#: (governor/controllers/), in the order of their layout (_FAST_SPEC below)
FAST_FILES = registry.pass_files()


@dataclass(slots=True)
class GroupStats:
    """Raw values of one group at one instant, as the kernel gave them (None: missing)."""

    cgroup_id: int
    cpu: dict[str, int] | None = None            # cpu.stat: usage_usec, user_usec, ...
    memory_current: int | None = None
    memory_peak: int | None = None               # memory.peak: Linux 5.19+
    swap_current: int | None = None
    memory_events: dict[str, int] | None = None  # low high max oom oom_kill oom_group_kill
    memory_stat: dict[str, int] | None = None    # slow tier only
    io: dict[str, dict[str, int]] | None = None  # "MAJ:MIN" -> rbytes wbytes rios ...
    pids_current: int | None = None
    psi: dict[str, Psi] = field(default_factory=dict)  # "cpu"/"memory"/"io" -> Psi


_GONE = (errno.ENODEV, errno.ENOENT)
#: descriptors left free for everything else the process opens (sockets, the database...)
FD_HEADROOM = 512


def raise_nofile_limit(want: int = 1 << 20, *, proc_root: str = "/proc") -> int:
    """Raise RLIMIT_NOFILE towards ``want`` (capped by ``proc_root``'s
    ``sys/fs/nr_open``); returns the soft limit.

    The reader keeps about a dozen descriptors per group: 1,000 groups already exceed the
    default soft limit of 1024.  Root may raise the hard limit too; others get soft = hard.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        cap = int(Path(proc_root, "sys/fs/nr_open").read_text())
    except (OSError, ValueError):
        cap = want
    target = min(want, cap)
    for new in ((max(target, hard), max(target, hard)), (max(soft, hard), hard)):
        if new[0] <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, new)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


_PRESSURE = ("cpu", "memory", "io")

#: FAST_FILES for the accelerator: (kind, GroupStats field or pressure key, Python parser);
#: kinds 0 flat keyed, 1 single integer, 2 io.stat, 3 pressure.  Text that is not in the
#: kernel's exact layout goes to the Python parser, so values and errors are the same.
_FAST_SPEC: tuple[tuple[int, str, Callable[[bytes], object]], ...] = (
    (0, "cpu", FlatKeyedBytes("cpu.stat")),
    (1, "memory_current", lambda b: parse_int_bytes(b, "memory.current")),
    (1, "memory_peak", lambda b: parse_int_bytes(b, "memory.peak")),
    (1, "swap_current", lambda b: parse_int_bytes(b, "memory.swap.current")),
    (0, "memory_events", FlatKeyedBytes("memory.events")),
    (2, "io", parse_io_stat_bytes),
    (1, "pids_current", lambda b: parse_int_bytes(b, "pids.current")),
    (3, "cpu", parse_psi_bytes),
    (3, "memory", parse_psi_bytes),
    (3, "io", parse_psi_bytes),
)
if len(_FAST_SPEC) != len(FAST_FILES):
    raise ImportError("governor.cgroupfs.reader: _FAST_SPEC does not follow FAST_FILES")


def _accelerated() -> bool:
    if _fastread is None or os.environ.get("GOVERNOR_PURE_PYTHON") == "1":
        return False
    _fastread.configure_reader(
        stats_type=GroupStats, stats_fields=tuple(GroupStats.__dataclass_fields__),
        files=_FAST_SPEC, psi_type=Psi, psiline_type=PsiLine, trusted=EVENTS)
    return True


#: the position in FAST_FILES of ``memory.events``, the file whose value the C path may
#: hand out unread while the OOM watch says nothing changed (StatReader.events_watched);
#: -1: not a fast file
EVENTS: int = FAST_FILES.index("memory.events") if "memory.events" in FAST_FILES else -1


#: whether the C accelerator reads the fast files (``governor doctor`` reports it)
ACCELERATED: bool = _accelerated()


class GroupFiles:
    """One group's open files: what :attr:`StatReader.entries` maps each directory to.
    The C sampling pass reads ``fast``, ``cache`` and ``ino`` and nothing else."""

    __slots__ = ("absent", "cache", "dirfd", "fast", "fds", "ino", "psi")

    def __init__(self, dirfd: int, ino: int) -> None:
        self.dirfd = dirfd
        self.ino = ino
        self.fds: dict[str, int] = {}
        self.absent: set[str] = set()
        #: the fds of FAST_FILES in order (-1: absent) once every one is cached or known
        #: absent; None until then (and past the fd budget, where files are reopened)
        self.fast: tuple[int, ...] | None = None
        #: per pressure file, the raw bytes last read and their Psi (immutable, so the
        #: unchanged text of an idle group is not parsed again)
        self.psi: list[tuple[bytes, Psi] | None] = [None, None, None]
        #: the C path's cache: per fast file, the raw bytes last read and their value;
        #: ``memory.events``' slot (:data:`EVENTS`) may also hold a mark, ``(n,)``: the
        #: file is watched, read it and trust what is read; then ``(bytes, value, True)``:
        #: nothing changed it since, its value is handed out unread
        #: (:meth:`StatReader.events_watched`)
        self.cache: list[tuple[Any, ...] | None] = [None] * len(FAST_FILES)

    def resolve_fast(self) -> None:
        fds = self.fds
        if all(n in fds or n in self.absent for n in FAST_FILES):
            self.fast = tuple(fds.get(n, -1) for n in FAST_FILES)


class StatReader:
    """Reads the stat files of many groups, keeping one fd open per file.

    ``read(rel)`` returns :class:`GroupStats` or raises :class:`GroupGone` (and forgets the
    group).  A group re-created under the same name is a new incarnation: the reader notices
    the different cgroup id only after the old one is reported gone, which the sampler sees
    as ``GroupGone`` first; call :meth:`forget` to drop a group explicitly.
    """

    def __init__(self, fs: CgroupFS, *, max_fds: int | None = None,
                 accelerated: bool | None = None) -> None:
        self.fs = fs
        #: the C hot path (None: :data:`ACCELERATED`; True without the extension: an error)
        if accelerated is None:
            accelerated = ACCELERATED
        if accelerated and not ACCELERATED:
            raise RuntimeError("governor.cgroupfs._fastread is not in use (not built, or "
                               "GOVERNOR_PURE_PYTHON=1)")
        self._read_fast = _fastread.read_fast if accelerated and _fastread else None
        self._groups: dict[str, GroupFiles] = {}
        if max_fds is None:
            max_fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - FD_HEADROOM
        #: descriptors this reader may keep open; past it files are read open-pread-close
        self.max_fds = max(max_fds, 0)
        self.open_fds = 0
        self._cpu_stat = FlatKeyedBytes("cpu.stat")
        self._memory_events = FlatKeyedBytes("memory.events")
        self._memory_stat = FlatKeyedBytes("memory.stat")
        #: groups (directories) whose memory.events is watched (:meth:`events_watched`)
        self._watched: set[str] = set()
        self._marks = 0

    @property
    def fast_read(self) -> Callable[[tuple[int, ...], list[Any], int], GroupStats] | None:
        """The C read of one group's fast files, ``read(entry.fast, entry.cache,
        entry.ino) -> GroupStats`` (``_fastread.read_fast``), or None on the pure-Python
        path.  It raises OSError or ValueError where :meth:`read` names the file: the
        caller then reads that group through :meth:`read`."""
        return self._read_fast

    @property
    def entries(self) -> Mapping[str, GroupFiles]:
        """Directory (relative to the root) -> its :class:`GroupFiles`: the reader's own
        mapping, live (the C sampling pass looks groups up in it on every pass; only the
        reader changes it).  An entry whose ``fast`` is None is not ready for
        :attr:`fast_read`."""
        return self._groups

    def __enter__(self) -> StatReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for rel in list(self._groups):
            self.forget(rel)

    def forget(self, rel: str) -> None:
        g = self._groups.pop(rel, None)
        if g is None:
            return
        for fd in g.fds.values():
            os.close(fd)
        os.close(g.dirfd)
        self.open_fds -= len(g.fds) + 1

    @property
    def open_groups(self) -> int:
        return len(self._groups)

    def _group(self, rel: str) -> GroupFiles:
        g = self._groups.get(rel)
        if g is None:
            try:
                dirfd = self.fs.open(rel, None, os.O_PATH | os.O_DIRECTORY)
            except OSError as e:
                raise self.fs._error("read", rel, None, e) from e
            g = GroupFiles(dirfd, os.fstat(dirfd).st_ino)
            if rel in self._watched and EVENTS >= 0:
                g.cache[EVENTS] = self._mark()
            self._groups[rel] = g
            self.open_fds += 1
        return g

    # -- memory.events, told by an inotify watch -----------------------------------------
    # The kernel notifies every change of a group's memory.events ("A value change in this
    # file generates a file modified event", cgroup-v2.rst).  The OOM watch has a watch on
    # each group's and reads the file on each event; while it says nothing changed, the
    # C path hands out the value it read last instead of reading the file again (one
    # pread of ten a group a pass; issue #16).  Each call is one store into a list under
    # the GIL, which the C read holds from its read to its store: an event's mark is never
    # lost between them.  The slow tier reads it again all the same (:meth:`read`), so a
    # missed event costs at most ``slow_every`` passes of staleness, never a count.

    def _mark(self) -> tuple[int]:
        """A new mark (a new object each time: the C read compares identities)."""
        self._marks += 1
        return (self._marks,)

    def events_watched(self, rel: str) -> None:
        """``rel``'s memory.events is watched from now on: read it once more, then trust it
        until :meth:`events_changed`."""
        self._watched.add(rel)
        g = self._groups.get(rel)
        if g is not None and EVENTS >= 0:
            g.cache[EVENTS] = self._mark()

    def events_changed(self, rel: str) -> None:
        """An event (or a lost one, an overflow) on ``rel``'s memory.events: read it at the
        next pass, and trust that read."""
        g = self._groups.get(rel)
        if g is not None and EVENTS >= 0 and rel in self._watched:
            g.cache[EVENTS] = self._mark()

    @property
    def events_watched_count(self) -> int:
        """How many groups' memory.events are watched now (the stop line's)."""
        return len(self._watched)

    def events_unwatched(self, rel: str | None = None) -> None:
        """``rel``'s memory.events (every group's: None) is no longer watched: read it
        every pass."""
        rels = list(self._watched) if rel is None else [rel]
        for r in rels:
            self._watched.discard(r)
            g = self._groups.get(r)
            if g is not None and EVENTS >= 0:
                g.cache[EVENTS] = None

    def _raw(self, rel: str, g: GroupFiles, name: str) -> bytes | None:
        fd = g.fds.get(name)
        cached = fd is not None
        if fd is None:
            if name in g.absent:
                return None
            try:
                # relative to the group's own directory fd: no path walk per pass
                fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW,
                             dir_fd=g.dirfd)
            except OSError as e:
                if e.errno == errno.ENOENT and self._alive(g):
                    g.absent.add(name)  # controller not enabled here: missing, not zero
                    return None
                if e.errno in _GONE:
                    self.forget(rel)
                    raise GroupGone("read", str(self.fs.path(rel)), name, e.errno or 0,
                                    hint="the group was removed") from e
                raise self.fs._error("read", rel, name, e) from e
            if self.open_fds < self.max_fds:
                g.fds[name] = fd  # (the fast path is not rebuilt here: read() does it)
                self.open_fds += 1
                cached = True
            # else: over the fd budget, this file is opened, read and closed each time
        try:
            data = _whole(fd, os.pread(fd, _BUF, 0))
        except OSError as e:
            if e.errno in _GONE:
                if not cached:
                    os.close(fd)
                    cached = True  # closed already
                self.forget(rel)
                raise GroupGone("read", str(self.fs.path(rel)), name, e.errno or 0,
                                hint="the group was removed") from e
            raise self.fs._error("read", rel, name, e) from e
        finally:
            if not cached:
                os.close(fd)
        if data is None:
            raise StatFileError(str(self.fs.path(rel)), name, "too_large", b"",
                                f"{MAX_FILE} bytes or more")
        return data

    @staticmethod
    def _alive(g: GroupFiles) -> bool:
        try:
            os.close(os.open("cgroup.events", os.O_RDONLY | os.O_CLOEXEC, dir_fd=g.dirfd))
        except OSError:
            return False
        return True

    def refresh(self) -> None:
        """Forget which files were absent (after controllers were enabled)."""
        for g in self._groups.values():
            g.absent.clear()
            g.fast = None

    def read_bytes(self, rel: str, name: str, *, recheck: bool = False) -> bytes | None:
        """Raw bytes of one file of a group through the fd cache: opened once, pread on
        later calls; None when the file does not exist (remembered for the group's
        incarnation until :meth:`refresh`, or a call with ``recheck``); :class:`GroupGone`
        when the group was removed; :class:`StatFileError` at :data:`MAX_FILE` bytes.
        The generic controllers' reads (:mod:`governor.controllers`) come through here."""
        g = self._groups.get(rel)
        if g is None:
            g = self._group(rel)
        if recheck:
            g.absent.discard(name)
        return self._raw(rel, g, name)

    def read_file(self, rel: str, name: str) -> str | None:
        """Raw text of one file through the fd cache (None when the file is absent)."""
        data = self._raw(rel, self._group(rel), name)
        if data is None:
            return None
        try:
            return data.decode()
        except UnicodeDecodeError as e:
            raise self._invalid(rel, name, data, e) from e

    def _invalid(self, rel: str, name: str, data: bytes, e: ValueError) -> StatFileError:
        reason, why = _why(e)
        return StatFileError(str(self.fs.path(rel)), name, reason, data, why)

    def _culprit(self, rel: str, raw: list[bytes | None], e: ValueError) -> StatFileError:
        """The error of the first fast file whose text does not parse (``e``: what the
        pass met; the files are parsed again one by one to name the one behind it)."""
        for name, data, spec in zip(FAST_FILES, raw, _FAST_SPEC, strict=True):
            if data is None:
                continue
            try:
                spec[2](data)
            except ValueError as bad:
                return self._invalid(rel, name, data, bad)
        return self._invalid(rel, "?", b"", e)  # (parsers are pure: not reached)

    def _slow(self, rel: str, g: GroupFiles, st: GroupStats) -> None:
        data = self._raw(rel, g, "memory.stat")
        if data is not None:
            try:
                st.memory_stat = self._memory_stat(data)
            except ValueError as e:
                raise self._invalid(rel, "memory.stat", data, e) from e

    def read(self, rel: str, *, slow: bool = False) -> GroupStats:
        g = self._groups.get(rel)
        if g is None:
            g = self._group(rel)
        fast = g.fast
        raw: list[bytes | None]
        if fast is not None and self._read_fast is not None:
            if slow and EVENTS >= 0 and len(g.cache[EVENTS] or ()) == 3:
                # the slow tier reads memory.events again even while trusted: what an
                # event lost would leave stale lasts slow_every passes at most
                g.cache[EVENTS] = self._mark()
            try:
                st: GroupStats = self._read_fast(fast, g.cache, g.ino)
            except (OSError, ValueError):
                # a read error, a file too large for one read or text no parser takes:
                # the per-file path below reads again and says which file and what
                g.fast = None
                return self.read(rel, slow=slow)
            if slow:
                self._slow(rel, g, st)
            return st
        if fast is None:
            raw = [self._raw(rel, g, name) for name in FAST_FILES]
            g.resolve_fast()
        else:
            # the hot path: one pread per cached fd.  Any error is left to the per-file path
            # above, which reads again and reports it with its file (GroupGone, CgroupError)
            pread = os.pread
            try:
                raw = [pread(fd, _BUF, 0) if fd >= 0 else None for fd in fast]
            except OSError:
                g.fast = None
                return self.read(rel, slow=slow)
            if _BUF in map(len, filter(None, raw)):  # a file larger than one read
                g.fast = None
                return self.read(rel, slow=slow)
        try:
            st = self._parse(g, raw)
        except ValueError as e:  # ParseError, UnicodeDecodeError: name the file
            raise self._culprit(rel, raw, e) from e
        if slow:
            self._slow(rel, g, st)
        return st

    def _parse(self, g: GroupFiles, raw: list[bytes | None]) -> GroupStats:
        cpu, cur, peak, swap, events, io, pids = raw[:7]
        psi: dict[str, Psi] = {}
        cache = g.psi
        for i, data in enumerate(raw[7:]):
            if data is None:
                continue
            last = cache[i]
            if last is None or last[0] != data:
                last = cache[i] = (data, parse_psi_bytes(data))
            psi[_PRESSURE[i]] = last[1]
        return GroupStats(
            cgroup_id=g.ino,
            cpu=None if cpu is None else self._cpu_stat(cpu),
            memory_current=None if cur is None else parse_int_bytes(cur, "memory.current"),
            memory_peak=None if peak is None else parse_int_bytes(peak, "memory.peak"),
            swap_current=None if swap is None else parse_int_bytes(swap, "memory.swap.current"),
            memory_events=None if events is None else self._memory_events(events),
            io=None if io is None else parse_io_stat_bytes(io),
            pids_current=None if pids is None else parse_int_bytes(pids, "pids.current"),
            psi=psi)

    def read_limit(self, rel: str, name: str) -> Limit | None:
        t = self.read_file(rel, name)
        if t is None:
            return None
        try:
            return parse_limit(t, name)
        except ParseError as e:
            raise self._invalid(rel, name, t.encode(), e) from e


def read_stats_reopen(fs: CgroupFS, rel: str, *, slow: bool = False) -> GroupStats:
    """The same reads as :meth:`StatReader.read`, reopening every file (the baseline the
    benchmark compares against, and a one-shot reader for commands like ``status``)."""
    with StatReader(fs) as r:
        return r.read(rel, slow=slow)
