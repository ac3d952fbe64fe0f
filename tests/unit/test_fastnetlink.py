"""The C accelerator governor.placement._fastnetlink against netlink.parse_messages_py.

Both parse the same connector datagrams (captured from Linux 6.1, then batched, foreign,
truncated and padded) and must give the same events.  Skipped, saying so, when the
extension is not built.
"""

from __future__ import annotations

import struct

import pytest

from governor.placement import netlink
from tests.unit.test_placement import EXEC, EXIT, FORK, GID, UID

pytestmark = pytest.mark.skipif(
    netlink._c is None, reason="governor.placement._fastnetlink not in use (not built: "
    "pip install -e .; or GOVERNOR_PURE_PYTHON=1)")


def _with(msg: bytes, off: int, fmt: str, value: int) -> bytes:
    out = bytearray(msg)
    struct.pack_into(fmt, out, off, value)
    return bytes(out)


def _cases() -> list[tuple[str, bytes]]:
    short = _with(FORK[:60], 0, "=I", 60)  # a fork event cut after 8 bytes of its union
    exit_16 = _with(EXIT[:68], 0, "=I", 68)  # an exit without the parent pid/tgid (< 5.x)
    return [
        ("fork", FORK), ("exec", EXEC), ("gid", GID), ("uid", UID), ("exit", EXIT),
        ("batched", FORK + EXEC + EXIT),
        ("foreign connector index", _with(EXEC, 16, "=I", 7)),
        ("foreign connector value", _with(EXEC, 20, "=I", 9)),
        ("NLMSG_NOOP", _with(EXEC, 4, "=H", netlink.NLMSG_NOOP)),
        ("NLMSG_ERROR", _with(EXEC, 4, "=H", netlink.NLMSG_ERROR)),
        ("fork truncated", short), ("fork truncated then exec", short + EXEC),
        ("exit without parent", exit_16),
        ("length past the datagram", _with(EXEC, 0, "=I", 200)),
        ("exec then a length past it", EXEC + _with(EXEC, 0, "=I", 200)),
        ("length below a header", _with(EXEC, 0, "=I", 8) + EXEC),
        ("PROC_EVENT_NONE (the ack)", _with(EXEC, 36, "=I", netlink.PROC_EVENT_NONE)),
        ("comm", _with(EXEC, 36, "=I", netlink.PROC_EVENT_COMM)),
        ("coredump", _with(EXEC, 36, "=I", netlink.PROC_EVENT_COREDUMP)),
        ("unknown what", _with(EXEC, 36, "=I", 0x400)),
        ("header only", EXEC[:30]), ("empty", b""), ("padded", EXEC + b"\0\0"),
        ("unaligned length", _with(EXEC + b"\0\0\0", 0, "=I", len(EXEC) + 1) + EXEC),
        ("many", (FORK + EXEC + UID + GID + EXIT) * 200),
    ]


@pytest.mark.parametrize(("data"), [c[1] for c in _cases()], ids=[c[0] for c in _cases()])
def test_proc_events_agree_with_the_python_parser(data: bytes) -> None:
    c = netlink.parse_messages(data)
    assert c == netlink.parse_messages_py(data), data.hex()
    assert all(type(e) is netlink.ProcEvent for e in c)


def test_proc_events_names_and_skips() -> None:
    assert [e.name for e in netlink.parse_messages(FORK + EXEC + EXIT)] == \
        ["fork", "exec", "exit"]
    assert netlink.parse_messages(_with(FORK[:60], 0, "=I", 60)) == []
    fork = netlink.parse_messages(FORK)[0]
    assert (fork.pid, fork.tgid) != (fork.ppid, fork.ptgid)  # child first, then parent


def test_proc_events_refuses_a_class_that_is_not_a_tuple() -> None:
    assert netlink._c is not None
    with pytest.raises(TypeError, match="tuple subclass"):
        netlink._c.proc_events(EXEC, dict)
