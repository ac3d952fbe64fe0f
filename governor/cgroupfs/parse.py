"""Pure parsers for the cgroup v2 interface file formats.

No I/O here: every function takes the text the kernel produced and returns plain typed
values, so each one is tested on real kernel output strings (tests/unit/test_parse.py).
Formats are those of Documentation/admin-guide/cgroup-v2.rst, "Interface Files / Format":

* single value, possibly ``max``            memory.max, pids.max, memory.current
* newline separated values                  cgroup.procs
* space separated values                    cgroup.controllers, cgroup.subtree_control
* flat keyed ``KEY VALUE`` per line          cpu.stat, memory.events, memory.stat, pids.events
* nested keyed ``KEY SUB=VAL ...`` per line  io.stat, io.max, PSI files (``some``/``full``)
* ``io.weight``/``io.bfq.weight``: ``default N`` then ``MAJ:MIN N`` lines

The sampler's hot path reads raw bytes: :class:`FlatKeyedBytes`, :func:`parse_int_bytes`,
:func:`parse_io_stat_bytes` and :func:`parse_psi_bytes` match the kernel's exact layout in
one regular expression and give the same values as the parsers above; any other text goes
to those parsers (same values, same errors).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from governor.errors import GovernorError

MAX: Final = "max"
#: a limit read from the kernel: bytes/count, or the literal "max" (no limit)
Limit = int | Literal["max"]


class ParseError(GovernorError, ValueError):
    """Text that is not in the expected kernel format (names the format and the text).

    Still a ValueError: callers that catch what ``int()`` and the parsers raise together
    (the reader names the file for both) keep catching it."""

    def __init__(self, fmt: str, text: str, why: str) -> None:
        self.fmt = fmt
        self.text = text
        self.why = why
        super().__init__(f"cannot parse {fmt}: {why}: {text[:200]!r}")


def parse_int(text: str, fmt: str = "integer") -> int:
    s = text.strip()
    try:
        return int(s)
    except ValueError:
        raise ParseError(fmt, text, "not an integer") from None


def parse_limit(text: str, fmt: str = "limit") -> Limit:
    """``max`` or an integer (memory.max, memory.high, pids.max, memory.swap.max...)."""
    s = text.strip()
    if s == MAX:
        return MAX
    return parse_int(s, fmt)


def parse_list(text: str) -> list[str]:
    """Space (or newline) separated tokens: cgroup.controllers, cgroup.subtree_control."""
    return text.split()


def parse_pids(text: str) -> list[int]:
    """cgroup.procs / cgroup.threads: one pid per line."""
    try:
        return [int(x) for x in text.split()]
    except ValueError:
        raise ParseError("pid list", text, "a line is not a pid") from None


def parse_flat_keyed(text: str, fmt: str = "flat keyed") -> dict[str, int]:
    """``KEY VALUE`` lines (cpu.stat, memory.events, memory.stat, pids.events, cgroup.events)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ParseError(fmt, text, f"line {line!r} is not 'KEY VALUE'")
        try:
            out[parts[0]] = int(parts[1])
        except ValueError:
            raise ParseError(fmt, text, f"value of {parts[0]!r} is not an integer") from None
    return out


def parse_nested_keyed(text: str, fmt: str = "nested keyed") -> dict[str, dict[str, Limit]]:
    """``KEY SUB=VAL SUB=VAL`` lines (io.stat, io.max); values may be ``max``."""
    out: dict[str, dict[str, Limit]] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        fields: dict[str, Limit] = {}
        for item in parts[1:]:
            k, sep, v = item.partition("=")
            if not sep:
                raise ParseError(fmt, text, f"{item!r} is not SUB=VAL")
            fields[k] = parse_limit(v, fmt)
        out[parts[0]] = fields
    return out


def parse_io_stat(text: str) -> dict[str, dict[str, int]]:
    """io.stat: ``MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..``.

    Counters are never ``max``; a device line whose counters are all zero is omitted by the
    kernel, so a missing device means "no IO seen", not an error.
    """
    out: dict[str, dict[str, int]] = {}
    for dev, fields in parse_nested_keyed(text, "io.stat").items():
        counters: dict[str, int] = {}
        for k, v in fields.items():
            if v == MAX:
                raise ParseError("io.stat", text, f"counter {k} of {dev} is 'max'")
            counters[k] = v
        out[dev] = counters
    return out


@dataclass(frozen=True, slots=True)
class IoWeight:
    default: int
    devices: dict[str, int]


def parse_io_weight(text: str, fmt: str = "io.weight") -> IoWeight:
    """io.weight / io.bfq.weight: ``default 100`` then ``MAJ:MIN WEIGHT`` lines."""
    default: int | None = None
    devices: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ParseError(fmt, text, f"line {line!r} is not 'KEY WEIGHT'")
        w = parse_int(parts[1], fmt)
        if parts[0] == "default":
            default = w
        else:
            devices[parts[0]] = w
    if default is None:
        raise ParseError(fmt, text, "no 'default' line")
    return IoWeight(default, devices)


@dataclass(frozen=True, slots=True)
class CpuMax:
    quota: Limit  # microseconds per period, or "max"
    period: int   # microseconds


def parse_cpu_max(text: str) -> CpuMax:
    """cpu.max: ``$MAX $PERIOD`` where $MAX is ``max`` or microseconds."""
    parts = text.split()
    if len(parts) != 2:
        raise ParseError("cpu.max", text, "expected '$MAX $PERIOD'")
    return CpuMax(parse_limit(parts[0], "cpu.max"), parse_int(parts[1], "cpu.max"))


@dataclass(frozen=True, slots=True)
class PsiLine:
    avg10: float
    avg60: float
    avg300: float
    total: int  # microseconds of stall, monotonic


@dataclass(frozen=True, slots=True)
class Psi:
    some: PsiLine
    full: PsiLine | None  # cpu.pressure has a "full" line since 5.13 (all zeros at root)


def parse_psi(text: str) -> Psi:
    """cpu.pressure, memory.pressure, io.pressure (Documentation/accounting/psi.rst)."""
    lines: dict[str, PsiLine] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        kv: dict[str, str] = {}
        for item in parts[1:]:
            k, sep, v = item.partition("=")
            if not sep:
                raise ParseError("pressure", text, f"{item!r} is not KEY=VALUE")
            kv[k] = v
        try:
            lines[parts[0]] = PsiLine(float(kv["avg10"]), float(kv["avg60"]),
                                      float(kv["avg300"]), int(kv["total"]))
        except (KeyError, ValueError) as e:
            raise ParseError("pressure", text, f"bad or missing field in {line!r}") from e
    if "some" not in lines:
        raise ParseError("pressure", text, "no 'some' line")
    return Psi(lines["some"], lines.get("full"))


# -- the sampler's fast path: raw bytes in the kernel's exact layout ---------------------

def parse_int_bytes(data: bytes, fmt: str = "integer") -> int:
    """:func:`parse_int` of ``data.decode()``, without decoding when ``int`` takes the bytes
    (ASCII digits and whitespace: a subset of what :func:`parse_int` takes)."""
    try:
        return int(data)
    except ValueError:
        return parse_int(data.decode(), fmt)


class FlatKeyedBytes:
    """:func:`parse_flat_keyed` of ``data.decode()`` for one file (``fmt``), fast for the
    key layouts already seen: a layout is the keys in their order, each line exactly
    ``KEY DIGITS\n`` (as the kernel prints it), matched whole by one regular expression.
    Text in any other layout is parsed by :func:`parse_flat_keyed` (whose result, when the
    text is in the exact layout, teaches a new one: at most ``max_layouts`` are kept)."""

    __slots__ = ("fmt", "layouts", "max_layouts")

    def __init__(self, fmt: str, max_layouts: int = 4) -> None:
        self.fmt = fmt
        self.max_layouts = max_layouts
        self.layouts: list[tuple[re.Pattern[bytes], tuple[str, ...]]] = []

    def __call__(self, data: bytes) -> dict[str, int]:
        for pattern, keys in self.layouts:
            m = pattern.fullmatch(data)
            if m is not None:
                try:
                    return dict(zip(keys, map(int, m.groups()), strict=True))
                except ValueError:  # past int()'s 4,300 digits: the text parser says so
                    break
        out = parse_flat_keyed(data.decode(), self.fmt)
        keys = tuple(out)
        if len(self.layouts) < self.max_layouts:
            pattern = re.compile(b"".join(re.escape(k.encode()) + rb" ([0-9]+)\n"
                                          for k in keys))
            if pattern.fullmatch(data) is not None:  # only the exact layout is learnt
                self.layouts.append((pattern, keys))
        return out


_IO_LINE: Final = re.compile(rb"([0-9]+:[0-9]+) rbytes=([0-9]+) wbytes=([0-9]+) "
                             rb"rios=([0-9]+) wios=([0-9]+) dbytes=([0-9]+) dios=([0-9]+)\n")


def parse_io_stat_bytes(data: bytes) -> dict[str, dict[str, int]]:
    """:func:`parse_io_stat` of ``data.decode()``, fast for lines in the kernel's layout
    (``MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..``)."""
    out: dict[str, dict[str, int]] = {}
    pos, end = 0, len(data)
    match = _IO_LINE.match
    while pos < end:
        m = match(data, pos)
        if m is None:
            return parse_io_stat(data.decode())
        try:
            out[m[1].decode()] = {"rbytes": int(m[2]), "wbytes": int(m[3]), "rios": int(m[4]),
                                  "wios": int(m[5]), "dbytes": int(m[6]), "dios": int(m[7])}
        except ValueError:  # past int()'s 4,300 digits: the text parser says so
            return parse_io_stat(data.decode())
        pos = m.end()
    return out


_PSI_LINE = (rb" avg10=([0-9]+\.[0-9]+) avg60=([0-9]+\.[0-9]+) avg300=([0-9]+\.[0-9]+)"
             rb" total=([0-9]+)\n")
_PSI: Final = re.compile(rb"some" + _PSI_LINE + rb"(?:full" + _PSI_LINE + rb")?")


def parse_psi_bytes(data: bytes) -> Psi:
    """:func:`parse_psi` of ``data.decode()``, fast for the kernel's layout (a ``some``
    line, then optionally a ``full`` line, each ``avg10= avg60= avg300= total=``)."""
    m = _PSI.fullmatch(data)
    if m is None:
        return parse_psi(data.decode())
    try:
        some = PsiLine(float(m[1]), float(m[2]), float(m[3]), int(m[4]))
        if m[5] is None:
            return Psi(some, None)
        return Psi(some, PsiLine(float(m[5]), float(m[6]), float(m[7]), int(m[8])))
    except ValueError:  # past int()'s 4,300 digits: the text parser says so
        return parse_psi(data.decode())


@dataclass(frozen=True, slots=True)
class MountEntry:
    mount_id: int
    parent_id: int
    root: str
    mount_point: str
    fstype: str
    source: str
    super_options: tuple[str, ...]
    #: per-mount options (field 6: ``rw,nosuid,nodev,noexec,relatime``), not the superblock's
    mount_options: tuple[str, ...] = ()


_OCTAL: Final = re.compile("[0-7]{3}")


def _unescape(s: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal
    if "\\" not in s:
        return s
    out = []
    i = 0
    while i < len(s):
        if s[i] == "\\" and _OCTAL.fullmatch(s, i + 1, i + 4):
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """/proc/self/mountinfo (proc(5)): optional fields end at the ``-`` separator."""
    out: list[MountEntry] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        left, sep, right = line.partition(" - ")
        if not sep:
            raise ParseError("mountinfo", line, "no ' - ' separator")
        lf = left.split()
        rf = right.split()
        if len(lf) < 6 or len(rf) < 3:
            raise ParseError("mountinfo", line, "too few fields")
        try:
            ids = int(lf[0]), int(lf[1])
        except ValueError:
            raise ParseError("mountinfo", line, "a mount id is not an integer") from None
        out.append(MountEntry(
            mount_id=ids[0], parent_id=ids[1], root=_unescape(lf[3]),
            mount_point=_unescape(lf[4]), fstype=rf[0], source=_unescape(rf[1]),
            super_options=tuple(rf[2].split(",")), mount_options=tuple(lf[5].split(",")),
        ))
    return out


@dataclass(frozen=True, slots=True)
class ProcCgroup:
    unified: str | None                 # the "0::/path" line (cgroup v2)
    v1: dict[str, str]                  # controller -> path for cgroup v1 hierarchies


def parse_proc_cgroup(text: str) -> ProcCgroup:
    """/proc/PID/cgroup: ``hierarchy-ID:controller-list:cgroup-path`` lines."""
    unified: str | None = None
    v1: dict[str, str] = {}
    for line in text.splitlines():
        if not line:
            continue
        parts = line.split(":", 2)
        if len(parts) != 3:
            raise ParseError("/proc/PID/cgroup", text, f"line {line!r} has no 3 fields")
        hid, ctrls, path = parts
        if hid == "0" and ctrls == "":
            unified = path
        else:
            for c in ctrls.split(","):
                if c:
                    v1[c] = path
    return ProcCgroup(unified, v1)
