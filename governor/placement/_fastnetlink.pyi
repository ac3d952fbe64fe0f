# Types of the optional C accelerator governor/placement/_fastnetlink.c: the process
# connector's datagrams (governor.placement.netlink.parse_messages_py in C).
from typing import TypeVar

_E = TypeVar("_E", bound=tuple[int, ...])

def proc_events(data: bytes, cls: type[_E], /) -> list[_E]:
    """Every process event in one datagram, each made as ``cls`` (a tuple subclass: the
    8 fields what, pid, tgid, ppid, ptgid, a, b, timestamp_ns) without its constructor."""
