"""The kernel's netlink process connector (``CONFIG_PROC_EVENTS``): fork, exec, uid/gid
and exit events as they happen.

Byte layouts are those of include/uapi/linux/netlink.h (``struct nlmsghdr``),
include/uapi/linux/connector.h (``struct cn_msg``) and include/uapi/linux/cn_proc.h
(``struct proc_event``), all in host byte order:

    nlmsghdr   u32 len, u16 type, u16 flags, u32 seq, u32 pid                  16 bytes
    cn_msg     u32 idx, u32 val, u32 seq, u32 ack, u16 len, u16 flags            20 bytes
    proc_event u32 what, u32 cpu, u64 timestamp_ns, then the union:             16 + ...
      fork  u32 parent_pid, parent_tgid, child_pid, child_tgid
      exec  u32 process_pid, process_tgid
      id    u32 process_pid, process_tgid, ruid|rgid, euid|egid
      exit  u32 process_pid, process_tgid, exit_code, exit_signal (+ parent pid/tgid)

Subscribing (``PROC_CN_MCAST_LISTEN``) needs CAP_NET_ADMIN in the initial user namespace
and a process in the initial pid namespace (drivers/connector/cn_proc.c
``cn_proc_mcast_ctl``); binding to the ``CN_IDX_PROC`` group needs root (the connector's
netlink socket has no NL_CFG_F_NONROOT_RECV).  A socket whose receive queue overflows
reports ENOBUFS on the next recv: events were lost and a full rescan must follow.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import types
from typing import Final, NamedTuple

from governor.accel import load
from governor.errors import GovernorError

#: the connector datagrams parsed in C (governor/placement/_fastnetlink.c), or None
_c: types.ModuleType | None = load("governor.placement._fastnetlink")

NETLINK_CONNECTOR: Final = 11
CN_IDX_PROC: Final = 1
CN_VAL_PROC: Final = 1
NLMSG_NOOP: Final = 1
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
PROC_CN_MCAST_LISTEN: Final = 1
PROC_CN_MCAST_IGNORE: Final = 2

# enum what (cn_proc.h)
PROC_EVENT_NONE: Final = 0x00000000
PROC_EVENT_FORK: Final = 0x00000001
PROC_EVENT_EXEC: Final = 0x00000002
PROC_EVENT_UID: Final = 0x00000004
PROC_EVENT_GID: Final = 0x00000040
PROC_EVENT_SID: Final = 0x00000080
PROC_EVENT_PTRACE: Final = 0x00000100
PROC_EVENT_COMM: Final = 0x00000200
PROC_EVENT_COREDUMP: Final = 0x40000000
PROC_EVENT_EXIT: Final = 0x80000000

EVENT_NAMES: Final = {
    PROC_EVENT_NONE: "none", PROC_EVENT_FORK: "fork", PROC_EVENT_EXEC: "exec",
    PROC_EVENT_UID: "uid", PROC_EVENT_GID: "gid", PROC_EVENT_SID: "sid",
    PROC_EVENT_PTRACE: "ptrace", PROC_EVENT_COMM: "comm", PROC_EVENT_COREDUMP: "coredump",
    PROC_EVENT_EXIT: "exit",
}

NLMSGHDR: Final = struct.Struct("=IHHII")
CN_MSG: Final = struct.Struct("=IIIIHH")
EVENT_HEADER: Final = struct.Struct("=IIQ")
FOUR_U32: Final = struct.Struct("=IIII")
TWO_U32: Final = struct.Struct("=II")
_HDRS: Final = NLMSGHDR.size + CN_MSG.size  # 36: where proc_event starts
_DATA: Final = _HDRS + EVENT_HEADER.size    # 52: where the union starts

#: receive queue asked for (SO_RCVBUFFORCE as root): about 50,000 queued events
RCVBUF: Final = 8 << 20


class ProcEvent(NamedTuple):
    """One event.  ``pid``/``tgid`` are the process it is about (the child for fork);
    ``ppid``/``ptgid`` the parent (fork only); ``a``/``b`` the real and effective id (uid,
    gid) or exit code and signal (exit)."""

    what: int
    pid: int
    tgid: int
    ppid: int = 0
    ptgid: int = 0
    a: int = 0
    b: int = 0
    timestamp_ns: int = 0

    @property
    def name(self) -> str:
        return EVENT_NAMES.get(self.what, hex(self.what))


def _align(n: int) -> int:
    return (n + 3) & ~3


def parse_event(buf: bytes, off: int = 0, end: int | None = None) -> ProcEvent | None:
    """The proc_event in the connector message at ``off`` (a netlink header first) that
    ends at ``end`` (default: the end of ``buf``); None for messages that are not process
    events or are too short."""
    size = (len(buf) if end is None else end) - off
    if size < _DATA:
        return None
    idx, val = TWO_U32.unpack_from(buf, off + NLMSGHDR.size)
    if idx != CN_IDX_PROC or val != CN_VAL_PROC:
        return None
    what, _cpu, ts = EVENT_HEADER.unpack_from(buf, off + _HDRS)
    d = off + _DATA
    if what == PROC_EVENT_FORK:
        if size < _DATA + 16:
            return None
        ppid, ptgid, pid, tgid = FOUR_U32.unpack_from(buf, d)
        return ProcEvent(what, pid, tgid, ppid, ptgid, timestamp_ns=ts)
    if what in (PROC_EVENT_UID, PROC_EVENT_GID, PROC_EVENT_EXIT):
        if size < _DATA + 16:
            return None
        pid, tgid, a, b = FOUR_U32.unpack_from(buf, d)
        return ProcEvent(what, pid, tgid, a=a, b=b, timestamp_ns=ts)
    if what == PROC_EVENT_NONE:
        return ProcEvent(what, 0, 0, timestamp_ns=ts)
    if size < _DATA + 8:
        return None
    pid, tgid = TWO_U32.unpack_from(buf, d)  # exec, sid, ptrace, comm, coredump
    return ProcEvent(what, pid, tgid, timestamp_ns=ts)


def parse_messages(buf: bytes) -> list[ProcEvent]:
    """Every process event in one datagram (usually one; the kernel may batch).  The C
    accelerator's ``_fastnetlink.proc_events`` when built (same result:
    tests/unit/test_fastnetlink.py)."""
    if _c is not None:
        events: list[ProcEvent] = _c.proc_events(buf, ProcEvent)
        return events
    return parse_messages_py(buf)


def parse_messages_py(buf: bytes) -> list[ProcEvent]:
    """:func:`parse_messages` in Python (the fallback)."""
    out: list[ProcEvent] = []
    off = 0
    while len(buf) - off >= NLMSGHDR.size:
        length, mtype, _flags, _seq, _pid = NLMSGHDR.unpack_from(buf, off)
        if length < NLMSGHDR.size or off + length > len(buf):
            break
        if mtype not in (NLMSG_NOOP, NLMSG_ERROR):
            ev = parse_event(buf, off, off + length)
            if ev is not None:
                out.append(ev)
        off += _align(length)
    return out


def control_message(op: int, *, seq: int = 0, port: int = 0) -> bytes:
    """The datagram that subscribes (``PROC_CN_MCAST_LISTEN``) or unsubscribes."""
    payload = struct.pack("=I", op)
    cn = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, seq, 0, len(payload), 0) + payload
    return NLMSGHDR.pack(NLMSGHDR.size + len(cn), NLMSG_DONE, 0, seq, port) + cn


class Overflow(GovernorError):
    """ENOBUFS: the receive queue overflowed and events were lost (the placer catches it
    and rescans)."""


class Connector:
    """A subscribed process-connector socket.  Raises OSError when it cannot be had
    (EPERM: not root; EPROTONOSUPPORT: kernel without the connector)."""

    def __init__(self, *, rcvbuf: int = RCVBUF, timeout: float | None = 0.5) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        try:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.bind((0, CN_IDX_PROC))
            self.port = self.sock.getsockname()[0]
            self.sock.send(control_message(PROC_CN_MCAST_LISTEN, port=self.port))
            if timeout is not None:
                self.set_timeout(timeout)
        except BaseException:
            self.sock.close()
            raise

    def set_timeout(self, timeout: float) -> None:
        """How long :meth:`receive` waits for a datagram (seconds, > 0).  The timeout is the
        kernel's (SO_RCVTIMEO) on a blocking socket: one recv(2) per datagram, where
        Python's own socket timeout costs a poll(2) before each."""
        sec = int(timeout)
        usec = int((timeout - sec) * 1e6)
        if sec == 0 and usec == 0:
            usec = 1  # a zero SO_RCVTIMEO would mean no timeout at all
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                             struct.pack("@ll", sec, usec))

    def receive(self) -> list[ProcEvent]:
        """The events of the next datagram ([] when the timeout passes with none);
        :class:`Overflow` on ENOBUFS."""
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:  # SO_RCVTIMEO expired
            return []
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                raise Overflow from e
            raise
        return parse_messages(data)

    def wake(self) -> None:
        """End a :meth:`receive` waiting in another thread, now (it returns []): a
        ``NLMSG_NOOP`` datagram sent to this socket's own port from a socket of the moment
        (a unicast between user sockets needs no privilege).  So the listener can wait
        without a short timeout while nothing happens: each timeout was a wake-up (about
        0.1 ms of CPU on the host, 20 a sampling interval at 0.5 s) of an idle daemon.
        Raises OSError when the datagram cannot be sent."""
        hdr = NLMSGHDR.pack(NLMSGHDR.size, NLMSG_NOOP, 0, 0, 0)
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR) as s:
            s.sendto(hdr, (self.port, 0))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(control_message(PROC_CN_MCAST_IGNORE, port=self.port))
        self.sock.close()

    def __enter__(self) -> Connector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def probe() -> tuple[bool, str]:
    """Can the connector socket be opened and bound here?  (Read-only: binds, never
    subscribes.)  Returns (ok, detail)."""
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    except OSError as e:
        return False, f"cannot open a NETLINK_CONNECTOR socket: {os.strerror(e.errno or 0)}" \
                      " (kernel without CONFIG_CONNECTOR/CONFIG_PROC_EVENTS?)"
    try:
        s.bind((0, CN_IDX_PROC))
    except OSError as e:
        return False, f"cannot bind to the proc connector group: {os.strerror(e.errno or 0)}" \
                      + (" (needs root)" if e.errno in (errno.EPERM, errno.EACCES) else "")
    finally:
        s.close()
    return True, "the process connector can be bound"
