"""Read policy files (a file, or a ``policy.d`` directory of drop-ins) into a :class:`Policy`.

Policy files are hostile input read by a root daemon: nothing here may raise anything but
:class:`PolicyInvalid`, and every problem is collected (with file, key, value and line where
possible) instead of stopping at the first.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Final, TypeAlias, cast

from governor.cgroupfs.names import check_name
from governor.errors import GovernorError, InvalidName
from governor.policy import units
from governor.policy.lines import LineIndex
from governor.policy.model import (
    RESTART_BACKOFF_CAP_US,
    ContainerMatch,
    Group,
    IoMax,
    Limits,
    MatchRule,
    MemoryBasis,
    OomAction,
    OomSettings,
    Policy,
    PressureKey,
    PricePlan,
    PriceVersion,
    Tenant,
)
from governor.policy.patterns import PatternError, compile_cmdline
from governor.policy.problems import PolicyInvalid, Problem, Severity, jsonable
from governor.policy.units import MAX, Size, UnitError, show

DeviceResolver: TypeAlias = Callable[[str], tuple[int, int]]
PathPart: TypeAlias = str | int
KeyPath: TypeAlias = tuple[PathPart, ...]

#: a drop-in larger than this is refused unread
MAX_FILE_BYTES: Final = 1 << 20
#: deepest nesting of tables/arrays accepted (the real format needs about 8)
MAX_DEPTH: Final = 16

# keys of a tenant or group table that describe limits, after flattening dotted keys
_SIZE_KEYS: Final = ("memory.min", "memory.low", "memory.high", "memory.max",
                     "memory.swap.max")
_LIMIT_KEYS: Final = frozenset({
    *_SIZE_KEYS, "cpu.weight", "cpu.shares", "cpu.max", "cpus", "cpu.max.burst",
    "io.weight", "io.blkio_weight", "io.max", "pids.max", "oom.group_kill",
})
_GROUP_KEYS: Final = _LIMIT_KEYS | {"storage.max", "oom.actions", "oom.pressure",
                                    "oom.restart_max", "oom.restart_backoff", "match"}
_TENANT_KEYS: Final = _LIMIT_KEYS | {"plan", "groups"}
#: keys whose value is a table of their own (not more dotted keys)
_LEAF_TABLES: Final = frozenset({"io.max", "oom.pressure"})
_IO_MAX_KEYS: Final = ("rbps", "wbps", "riops", "wiops")
_OOM_ACTIONS: Final = ("log", "alert", "restart")
_MATCH_FIELDS: Final = ("user", "uid", "group", "gid", "exe", "comm", "cmdline", "cgroup",
                        "container", "on_exec")
_PRICE_FIELDS: Final = ("cpu_core_hour", "memory_gib_hour", "io_read_gib", "io_write_gib",
                        "oom_kill", "storage_gib_hour")
#: price keys a plan may leave out: 0 (storage_gib_hour came with issue #19, after plans
#: were written without it)
_OPTIONAL_PRICES: Final = frozenset({"oom_kill", "storage_gib_hour"})
_PLAN_KEYS: Final = ("currency", *_PRICE_FIELDS, "memory_basis", "prices")
_MEMORY_BASES: Final = ("usage", "reservation", "max")
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+\Z")
_TOML_POS: Final = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*\Z")


def stat_block_device(path: str) -> tuple[int, int]:
    """The default device resolver: ``(major, minor)`` of a block device node."""
    st = os.stat(path)
    if not stat.S_ISBLK(st.st_mode):
        raise ValueError(f"{path} is not a block device")
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def render_key(path: Iterable[PathPart]) -> str:
    """``("tenants", "acme", "io.max"...)`` parts -> ``tenants.acme.io.max."/dev/vda"``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = part if _BARE_KEY.match(part) else json.dumps(part, ensure_ascii=False)
        out += ("." if out else "") + text
    return out


@dataclass
class _Doc:
    name: str
    text: str
    data: dict[str, object]
    lines: LineIndex


@dataclass
class _Ctx:
    """Collects problems; ``doc`` is the file being validated."""

    resolver: DeviceResolver
    problems: list[Problem] = field(default_factory=list)
    doc: _Doc | None = None

    def add(self, path: Sequence[PathPart], value: object, message: str,
            severity: Severity = "error", *, doc: _Doc | None = None) -> None:
        doc = doc or self.doc
        self.problems.append(Problem(
            file=doc.name if doc else "",
            key=render_key(_split_path(path)),
            value=jsonable(value),
            message=message,
            line=doc.lines.find(path) if doc else None,
            severity=severity,
        ))


def _is_name_position(path: Sequence[PathPart], i: int) -> bool:
    head = path[0] if path else None
    return (i == 1 and head in ("tenants", "plans")) or (
        i == 3 and head == "tenants" and len(path) > 3 and path[2] == "groups")


def _split_path(path: Sequence[PathPart]) -> list[PathPart]:
    """Flattened keys such as ``memory.max`` are one part of a path; render them as the
    dotted key the operator wrote, but keep a tenant called ``a.b`` quoted."""
    out: list[PathPart] = []
    for i, part in enumerate(path):
        if (isinstance(part, str) and "." in part and not _is_name_position(path, i)
                and all(_BARE_KEY.match(p) for p in part.split("."))):
            out.extend(part.split("."))
        else:
            out.append(part)
    return out


# --- reading files ------------------------------------------------------------------------

def _depth(value: object) -> int:
    """Nesting depth of parsed TOML, iteratively (no recursion on hostile input)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def _parse_text(name: str, text: str, problems: list[Problem]) -> _Doc | None:
    lines = LineIndex(text)
    try:
        data = tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        pos = _TOML_POS.search(msg)
        line = int(pos.group(1)) if pos else None
        if pos:
            msg = f"{msg[:pos.start()]} (column {pos.group(2)})"
        problems.append(Problem(name, "", None, f"TOML syntax error: {msg}", line))
        return None
    except RecursionError:
        problems.append(Problem(name, "", None, "nesting too deep to parse"))
        return None
    if _depth(data) > MAX_DEPTH:
        problems.append(Problem(name, "", None,
                                f"tables and arrays nest deeper than {MAX_DEPTH} levels"))
        return None
    return _Doc(name, text, data, lines)


def _read_file(path: str, name: str, problems: list[Problem]) -> _Doc | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        problems.append(Problem(name, "", None, f"cannot open: {exc.strerror}"))
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            problems.append(Problem(name, "", None, "not a regular file"))
            return None
        if st.st_size > MAX_FILE_BYTES:
            problems.append(Problem(name, "", st.st_size,
                                    f"file is {st.st_size} bytes; the limit is 1 MiB"))
            return None
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    except OSError as exc:
        problems.append(Problem(name, "", None, f"cannot read: {exc.strerror}"))
        return None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        problems.append(Problem(name, "", None, "file grew above the 1 MiB limit"))
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        problems.append(Problem(name, "", None, "not UTF-8 text (TOML files are UTF-8)",
                                line))
        return None
    return _parse_text(name, text, problems)


def _read_paths(paths: Sequence[str | Path], problems: list[Problem]) -> list[_Doc]:
    docs: list[_Doc] = []
    seen: set[str] = set()

    def read(full: str, name: str) -> None:
        real = os.path.realpath(full)
        if real in seen:
            return
        seen.add(real)
        doc = _read_file(full, name, problems)
        if doc is not None:
            docs.append(doc)

    for given in paths:
        display = str(given)
        try:
            is_dir = os.path.isdir(given)
            exists = os.path.exists(given)
        except (OSError, ValueError):
            is_dir = exists = False
        if not exists:
            problems.append(Problem(display, "", None, "no such file or directory"))
            continue
        if not is_dir:
            read(os.fspath(given), display)
            continue
        try:
            names = sorted(os.listdir(given))
        except OSError as exc:
            problems.append(Problem(display, "", None, f"cannot list: {exc.strerror}"))
            continue
        dir_real = os.path.realpath(given)
        for entry in names:
            if not entry.endswith(".toml") or entry.startswith("."):
                continue
            full = os.path.join(given, entry)
            name = os.path.join(display, entry)
            if os.path.islink(full):
                target = os.path.realpath(full)
                if os.path.commonpath([target, dir_real]) != dir_real:
                    problems.append(Problem(
                        name, "", os.readlink(full),
                        f"is a symlink to {target}, outside {display}; drop-ins must stay "
                        "inside their directory"))
                    continue
            read(full, name)
    return docs


# --- values -------------------------------------------------------------------------------

class _Bad(GovernorError):
    """A value problem; the message names the value (raised inside, reported once)."""


def _int(value: object, lo: int, hi: int | None, what: str, extra: str = "") -> int:
    rng = (f"{lo}..{hi}" if hi is not None else f"{lo} or more") + extra
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"{show(value)} is not an integer; {what} takes {rng}")
    if value < lo or (hi is not None and value > hi):
        raise _Bad(f"{show(value)} is out of range; {what} takes {rng}")
    return value


def _str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _Bad(f"{show(value)} is not a string; {what}")
    if not value:
        raise _Bad(f"{what} must not be empty")
    if any(not ch.isprintable() for ch in value):
        raise _Bad(f"{show(value)} contains control characters")
    return value


def _size(value: object) -> Size:
    try:
        return units.parse_size(value)
    except UnitError as exc:
        raise _Bad(str(exc)) from None


def _money(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | str):
        if isinstance(value, float):
            raise _Bad(f"{show(value)} is a float; write money as a string, e.g. \"0.040\"")
        raise _Bad(f"{show(value)} is not a price; write a decimal string like \"0.040\"")
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except (InvalidOperation, ValueError):
        raise _Bad(f"{show(value)} is not a decimal number") from None
    if not amount.is_finite():
        raise _Bad(f"{show(value)} is not a finite number")
    if amount < 0:
        raise _Bad(f"{show(value)} is negative; prices are 0 or more")
    exponent = amount.as_tuple().exponent
    if amount != 0 and (amount.adjusted() >= 9 or (isinstance(exponent, int)
                                                    and exponent < -18)):
        raise _Bad(f"{show(value)} is outside 0..999999999 with at most 18 decimals")
    return amount


def _flatten(table: Mapping[str, object], known: frozenset[str]) -> dict[str, object]:
    """Join dotted keys (``memory.max = ...`` is ``{"memory": {"max": ...}}`` to tomllib)
    into flat names, stopping at known leaves and at names no known key continues."""
    out: dict[str, object] = {}
    stack: list[tuple[str, object]] = [(k, v) for k, v in table.items()]
    while stack:
        name, value = stack.pop(0)
        if (isinstance(value, dict) and name not in known and name not in _LEAF_TABLES
                and any(k.startswith(name + ".") for k in known)):
            stack[0:0] = [(f"{name}.{k}", v) for k, v in value.items()]
            continue
        out[name] = value
    return out


def _unknown(ctx: _Ctx, base: KeyPath, name: str, value: object, known: Iterable[str]) -> None:
    close: list[str] = []
    if isinstance(value, dict) and len(value) == 1:  # memroy.max = ...: compare it whole
        close = difflib.get_close_matches(f"{name}.{next(iter(value))}", sorted(known), n=1,
                                          cutoff=0.8)
    close = close or difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    ctx.add((*base, name), value, f"unknown key {name}{hint}")


# --- limits -------------------------------------------------------------------------------

def _io_max(ctx: _Ctx, path: KeyPath, value: object) -> tuple[IoMax, ...]:
    if not isinstance(value, dict):
        ctx.add(path, value, f"{show(value)} is not a table of devices, e.g. "
                             "{ \"/dev/vda\" = { wbps = \"10M\" } }")
        return ()
    out: list[IoMax] = []
    seen: dict[tuple[int, int], str] = {}
    for device, spec in value.items():
        dpath = (*path, device)
        number = units.parse_device_number(device)
        if number is None:
            if not device.startswith("/"):
                ctx.add(dpath, device, f"device {show(device)} is neither a path like "
                                       "/dev/vda nor MAJ:MIN")
                continue
            try:
                number = ctx.resolver(device)
            except Exception as exc:  # any resolver failure is a problem, not a crash
                ctx.add(dpath, device, f"unknown device {show(device)}: {exc}")
                continue
        if number in seen:
            ctx.add(dpath, device, f"device {show(device)} is {number[0]}:{number[1]}, "
                                   f"already limited as {show(seen[number])}")
            continue
        seen[number] = device
        if not isinstance(spec, dict) or not spec:
            ctx.add(dpath, spec, "give a table with rbps, wbps, riops and/or wiops")
            continue
        limits: dict[str, int | None] = {}
        for key, raw in spec.items():
            kpath = (*dpath, key)
            if key not in _IO_MAX_KEYS:
                _unknown(ctx, dpath, key, raw, _IO_MAX_KEYS)
                continue
            try:
                if key.endswith("bps"):
                    size = _size(raw)
                    limit: int | None = None if size is MAX else size
                elif isinstance(raw, str) and raw.strip().lower() == "max":
                    limit = None
                else:
                    limit = _int(raw, 0, 2**63 - 1, f"{key} (IO per second)", ' or "max"')
            except _Bad as exc:
                ctx.add(kpath, raw, str(exc))
                continue
            if limit == 0:
                ctx.add(kpath, raw, f"{key} = 0 would stop all IO; use at least 1, or "
                                    "\"max\" for no limit")
                continue
            limits[key] = limit
        out.append(IoMax(device, number[0], number[1], **limits))
    return tuple(out)


def _oom(ctx: _Ctx, base: KeyPath, flat: Mapping[str, object]) -> OomSettings:
    actions: list[OomAction] = []
    pressure: dict[PressureKey, float] = {}
    if "oom.actions" in flat:
        raw = flat["oom.actions"]
        path = (*base, "oom.actions")
        if not isinstance(raw, list):
            ctx.add(path, raw, f"{show(raw)} is not a list; e.g. [\"log\", \"alert\"]")
        else:
            for i, item in enumerate(raw):
                if item not in _OOM_ACTIONS:
                    close = difflib.get_close_matches(str(item), _OOM_ACTIONS, n=1)
                    hint = f"; did you mean {close[0]}?" if close else ""
                    ctx.add((*path, i), item, f"{show(item)} is not an OOM action (log, "
                                              f"alert, restart){hint}")
                elif item in actions:
                    ctx.add((*path, i), item, f"{show(item)} is listed twice", "warning")
                else:
                    actions.append(cast(OomAction, item))
    if "oom.pressure" in flat:
        raw = flat["oom.pressure"]
        path = (*base, "oom.pressure")
        if not isinstance(raw, dict):
            ctx.add(path, raw, f"{show(raw)} is not a table; e.g. {{ some_avg10 = 20.0 }}")
        else:
            names = [k.value for k in PressureKey]
            for key, value in raw.items():
                if key not in names:
                    _unknown(ctx, path, key, value, names)
                elif (isinstance(value, bool) or not isinstance(value, int | float)
                      or not 0 < value <= 100):
                    ctx.add((*path, key), value, f"{show(value)} is not a percentage "
                                                 "above 0 and at most 100")
                else:
                    pressure[PressureKey(key)] = float(value)
    restart_max = 3  # OomSettings.restart_max
    if "oom.restart_max" in flat:
        raw = flat["oom.restart_max"]
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 1000:
            ctx.add((*base, "oom.restart_max"), raw,
                    f"{show(raw)} is not a whole number of restarts from 0 to 1000")
        else:
            restart_max = raw
    restart_backoff_us = 1_000_000  # OomSettings.restart_backoff_us
    if "oom.restart_backoff" in flat:
        raw = flat["oom.restart_backoff"]
        path = (*base, "oom.restart_backoff")
        try:
            us = units.parse_duration_us(raw)
        except UnitError as e:
            ctx.add(path, raw, str(e))
        else:
            if not 0 < us <= RESTART_BACKOFF_CAP_US:
                ctx.add(path, raw, f"{show(raw)} is not a backoff above 0 and at most "
                                   "300s (it doubles after each restart, up to 300s)")
            else:
                restart_backoff_us = us
    if ("restart" not in actions
            and ("oom.restart_max" in flat or "oom.restart_backoff" in flat)):
        key = "oom.restart_max" if "oom.restart_max" in flat else "oom.restart_backoff"
        ctx.add((*base, key), flat[key], "has no effect: oom.actions does not list "
                                         "\"restart\"", "warning")
    group_kill = flat.get("oom.group_kill")
    return OomSettings(
        group_kill=group_kill if isinstance(group_kill, bool) else None,
        actions=tuple(actions),
        pressure=tuple(sorted(pressure.items())),
        restart_max=restart_max,
        restart_backoff_us=restart_backoff_us,
    )


def _limits(ctx: _Ctx, base: KeyPath, flat: Mapping[str, object]) -> Limits:
    """Build :class:`Limits` from a flattened tenant/group table (unknown keys were
    reported by the caller)."""
    fields: dict[str, object] = {}

    def take(key: str, parse: Callable[[object], object]) -> object | None:
        if key not in flat:
            return None
        try:
            return parse(flat[key])
        except (_Bad, UnitError) as exc:
            ctx.add((*base, key), flat[key], str(exc))
            return None

    sizes: dict[str, Size] = {}
    for key in _SIZE_KEYS:
        got = take(key, _size)
        if got is not None:
            sizes[key] = cast(Size, got)
            fields[key.replace(".", "_")] = got

    weight = take("cpu.weight", lambda v: _int(v, 1, 10_000, "cpu.weight"))
    shares = take("cpu.shares", lambda v: _int(v, units.SHARES_MIN, units.SHARES_MAX,
                                               "cpu.shares (cgroup v1/Docker)"))
    if "cpu.shares" in flat and "cpu.weight" in flat:
        ctx.add((*base, "cpu.shares"), flat["cpu.shares"],
                "cpu.shares and cpu.weight both set the CPU weight; keep one")
    elif shares is not None:
        weight = units.shares_to_weight(cast(int, shares))
    fields["cpu_weight"] = weight

    cpu_max = take("cpu.max", units.parse_cpu_max)
    cpus = take("cpus", units.cores_to_cpu_max)
    if "cpus" in flat and "cpu.max" in flat:
        ctx.add((*base, "cpus"), flat["cpus"],
                "cpus and cpu.max both set the CPU limit; keep one")
    elif cpus is not None:
        cpu_max = cpus
    fields["cpu_max"] = cpu_max

    burst = take("cpu.max.burst", units.parse_duration_us)
    if isinstance(burst, int) and burst > units.MAX_QUOTA_US:
        ctx.add((*base, "cpu.max.burst"), flat["cpu.max.burst"],
                "cpu.max.burst is above the kernel's limit of 2^44-1 us")
        burst = None
    if (isinstance(burst, int) and isinstance(cpu_max, units.CpuMax)
            and cpu_max.quota_us is not None and burst > cpu_max.quota_us):
        ctx.add((*base, "cpu.max.burst"), flat["cpu.max.burst"],
                f"cpu.max.burst ({burst} us) is above the cpu.max quota "
                f"({cpu_max.quota_us} us); the kernel refuses that")
        burst = None
    fields["cpu_max_burst_us"] = burst

    io_weight = take("io.weight", lambda v: _int(v, 1, 10_000, "io.weight"))
    blkio = take("io.blkio_weight", lambda v: _int(v, units.BLKIO_MIN, units.BLKIO_MAX,
                                                   "io.blkio_weight (Docker blkio-weight)"))
    if "io.blkio_weight" in flat and "io.weight" in flat:
        ctx.add((*base, "io.blkio_weight"), flat["io.blkio_weight"],
                "io.blkio_weight and io.weight both set the IO weight; keep one")
    elif blkio is not None:
        io_weight = units.blkio_weight_to_io_weight(cast(int, blkio))
    fields["io_weight"] = io_weight

    if "io.max" in flat:
        fields["io_max"] = _io_max(ctx, (*base, "io.max"), flat["io.max"])

    def pids(v: object) -> Size:
        if isinstance(v, str) and v.strip().lower() == "max":
            return MAX
        return _int(v, 1, 2**31 - 1, "pids.max", ' or "max"')

    fields["pids_max"] = take("pids.max", pids)

    def flag(v: object) -> bool:
        if not isinstance(v, bool):
            raise _Bad(f"{show(v)} is not true or false")
        return v

    fields["memory_oom_group"] = take("oom.group_kill", flag)

    # a protection or throttle above the hard limit of the same group is a mistake
    hard = sizes.get("memory.max")
    if isinstance(hard, int):
        for key in ("memory.min", "memory.low", "memory.high"):
            value = sizes.get(key)
            if value is not None and (value is MAX or value > hard):
                ctx.add((*base, key), flat[key],
                        f"{key} ({units.format_size(value)}) is above memory.max "
                        f"({units.format_size(hard)}) of the same group")
    return Limits(**{k: v for k, v in fields.items() if v is not None})  # type: ignore[arg-type]


# --- match rules --------------------------------------------------------------------------

def _glob(value: object, what: str) -> str:
    return _str(value, f"{what} is a glob pattern")


def _match_rule(ctx: _Ctx, path: KeyPath, raw: object) -> MatchRule | None:
    if not isinstance(raw, dict):
        ctx.add(path, raw, "a match rule is a table, e.g. [[...match]] user = \"www-data\"")
        return None
    values: dict[str, object] = {}
    ok = True
    for key, value in raw.items():
        kpath = (*path, key)
        if key not in _MATCH_FIELDS:
            _unknown(ctx, path, key, value, _MATCH_FIELDS)
            ok = False
            continue
        try:
            if key in ("uid", "gid"):
                values[key] = _int(value, 0, 2**32 - 2, key)
            elif key in ("user", "group"):
                values[key] = _str(value, f"{key} is a name")
            elif key in ("exe", "comm", "cgroup"):
                values[key] = _glob(value, key)
            elif key == "cmdline":
                pattern = _str(value, "cmdline is a regular expression")
                try:
                    compile_cmdline(pattern)
                except PatternError as exc:
                    raise _Bad(f"{show(value)} is not a valid regular expression "
                               f"(RE2 syntax): {exc}") from None
                values[key] = pattern
            elif key == "on_exec":
                if not isinstance(value, bool):
                    raise _Bad(f"{show(value)} is not true or false")
                values[key] = value
            else:
                values[key] = _container(value)
        except _Bad as exc:
            ctx.add(kpath, value, str(exc))
            ok = False
    if not ok:
        return None
    if not set(values) - {"on_exec"}:
        ctx.add(path, raw, "an empty match rule would match every process; give a field")
        return None
    return MatchRule(**values)  # type: ignore[arg-type]


def _container(value: object) -> bool | ContainerMatch:
    if isinstance(value, bool):
        return value
    if not isinstance(value, dict) or not value:
        raise _Bad(f"{show(value)} is not true/false, {{pidns = N}} or {{init = \"name\"}}")
    extra = set(value) - {"pidns", "init"}
    if extra:
        raise _Bad(f"unknown container field {show(sorted(extra)[0])}; use pidns or init")
    pidns = value.get("pidns")
    init = value.get("init")
    if pidns is not None:
        pidns = _int(pidns, 0, 2**64 - 1, "pidns (a namespace inode number)")
    if init is not None:
        init = _str(init, "init is a process name")
    return ContainerMatch(pidns=pidns, init=init)


def _overlaps(ctx: _Ctx, rules: list[tuple[_Doc, KeyPath, str, MatchRule]]) -> None:
    """Warn when every process one rule matches is also matched by an earlier rule (or the
    reverse): the placement would depend on rule order.

    Rule A and a later rule B overlap when the fields A sets are a subset of B's, or the
    reverse (as ``(name, value)`` pairs); B is reported once, against the earliest such A.
    Near-linear (issue 15: the pairwise check took 94 s at 8,000 rules): a rule sets at
    most ``len(_MATCH_FIELDS)`` fields, so each rule's field subsets are enumerated (at
    most 2**10, typically 2 to 8) and two maps answer both directions by lookup:
    ``exact`` (field set -> first rule with exactly that set: the A that are subsets of B)
    and ``within`` (field set -> first rule whose set contains it: the A that contain B).
    """
    exact: dict[frozenset[tuple[str, object]], int] = {}
    within: dict[frozenset[tuple[str, object]], int] = {}
    for j, (doc_b, path_b, where_b, rule_b) in enumerate(rules):
        fields_b = rule_b.fields()
        items = list(fields_b.items())
        items_b = frozenset(items)
        subsets = [frozenset(c) for r in range(1, len(items) + 1)
                   for c in itertools.combinations(items, r)]
        found = within.get(items_b)
        for s in subsets:
            i = exact.get(s)
            if i is not None and (found is None or i < found):
                found = i
        if found is not None:
            _, path_a, where_a, rule_a = rules[found]
            same = ("the same rule as" if frozenset(rule_a.fields().items()) == items_b
                    else "overlaps")
            ctx.add(path_b, fields_b,
                    f"{same} {render_key(path_a[-2:])} of {where_a}: a process could "
                    f"match both ({where_b})", "warning", doc=doc_b)
        exact.setdefault(items_b, j)
        for s in subsets:
            within.setdefault(s, j)


# --- tenants and groups -------------------------------------------------------------------

def _check_name(ctx: _Ctx, path: KeyPath, name: str, what: str) -> bool:
    try:
        check_name(name, what=what)
    except InvalidName as exc:
        ctx.add(path, name, f"{show(name)} is not a safe {what} name: {exc.reason}")
        return False
    return True


def _group(ctx: _Ctx, tenant: str, name: str, raw: object,
           rules: list[tuple[_Doc, KeyPath, str, MatchRule]]) -> Group | None:
    base: KeyPath = ("tenants", tenant, "groups", name)
    ok = _check_name(ctx, base, name, "group")
    if not isinstance(raw, dict):
        ctx.add(base, raw, "a group is a table: [tenants.<tenant>.groups.<group>]")
        return None
    flat = _flatten({k: v for k, v in raw.items() if k != "match"}, _GROUP_KEYS)
    for key, value in flat.items():
        if key not in _GROUP_KEYS:
            _unknown(ctx, base, key, value, _GROUP_KEYS)
    limits = _limits(ctx, base, flat)
    oom = _oom(ctx, base, flat)
    storage_max = _storage_max(ctx, base, flat)
    match: list[MatchRule] = []
    if "match" in raw:
        raw_rules = raw["match"]
        if not isinstance(raw_rules, list):
            ctx.add((*base, "match"), raw["match"],
                    "match is an array of tables: [[tenants.<t>.groups.<g>.match]]")
        else:
            for i, item in enumerate(raw_rules):
                rule = _match_rule(ctx, (*base, "match", i), item)
                if rule is not None:
                    match.append(rule)
                    assert ctx.doc is not None
                    rules.append((ctx.doc, (*base, "match", i), f"{tenant}/{name}", rule))
    if not ok:
        return None
    assert ctx.doc is not None
    return Group(name=name, tenant=tenant, limits=limits, match=tuple(match), oom=oom,
                 storage_max=storage_max, source=ctx.doc.name)


#: the smallest storage.max: a container's upper layer needs a few blocks before the
#: command's first write (overlayfs's work directory, copied-up parents)
STORAGE_MIN: Final = 1 << 20


def _storage_max(ctx: _Ctx, base: KeyPath, flat: Mapping[str, object]) -> int | None:
    """``storage.max``: the most bytes the group's containers may write to their writable
    layers together (a project quota, governor.image.writable); None: no limit."""
    if "storage.max" not in flat:
        return None
    raw = flat["storage.max"]
    try:
        size = _size(raw)
    except _Bad as exc:
        ctx.add((*base, "storage.max"), raw, str(exc))
        return None
    if size is MAX:
        return None
    if not isinstance(size, int) or size < STORAGE_MIN:
        ctx.add((*base, "storage.max"), raw, f"{show(raw)} is below the smallest "
                                              f"storage.max, 1M; use \"max\" for no limit")
        return None
    return size


def _fmt(size: Size) -> str:
    return units.format_size(size)


def _tenant_vs_groups(ctx: _Ctx, tenant: Tenant, flat: Mapping[str, object]) -> None:
    base: KeyPath = ("tenants", tenant.name)
    for key, attr in (("memory.min", "memory_min"), ("memory.low", "memory_low")):
        cap = getattr(tenant.limits, attr)
        if not isinstance(cap, int):
            continue
        parts = [(g.name, getattr(g.limits, attr)) for g in tenant.groups.values()
                 if getattr(g.limits, attr) is not None]
        if any(v is MAX for _, v in parts):
            total: Size = MAX
        else:
            total = sum(int(v) for _, v in parts)
        if total is MAX or total > cap:
            detail = " + ".join(f"{n} {_fmt(v)}" for n, v in parts)
            ctx.add((*base, key), flat.get(key),
                    f"the groups' {key} add up to {_fmt(total)} ({detail}), above the "
                    f"tenant's {key} of {_fmt(cap)}")
    cap_max = tenant.limits.memory_max
    if isinstance(cap_max, int):
        for g in tenant.groups.values():
            gmax = g.limits.memory_max
            if isinstance(gmax, int) and gmax > cap_max:
                ctx.add((*base, "groups", g.name, "memory.max"), gmax,
                        f"memory.max ({_fmt(gmax)}) is above the tenant's memory.max "
                        f"({_fmt(cap_max)}); the tenant's limit applies first", "warning")


def _tenant(ctx: _Ctx, name: str, raw: object,
            rules: list[tuple[_Doc, KeyPath, str, MatchRule]]) -> tuple[Tenant, str | None] | None:
    base: KeyPath = ("tenants", name)
    ok = _check_name(ctx, base, name, "tenant")
    if not isinstance(raw, dict):
        ctx.add(base, raw, "a tenant is a table: [tenants.<name>]")
        return None
    # storage.max flattened too, to be refused by its name (it is a group's key)
    flat = _flatten({k: v for k, v in raw.items() if k != "groups"},
                    _TENANT_KEYS | {"storage.max"})
    for key, value in flat.items():
        if key == "storage.max":
            ctx.add((*base, key), value, "storage.max is set per group (the writable layers "
                                         "of the group's containers from images): move it "
                                         "to [tenants.<tenant>.groups.<group>]")
        elif key not in _TENANT_KEYS:
            _unknown(ctx, base, key, value, _TENANT_KEYS)
    plan: str | None = None
    if "plan" in flat:
        try:
            plan = _str(flat["plan"], "plan names a [plans.<name>] table")
        except _Bad as exc:
            ctx.add((*base, "plan"), flat["plan"], str(exc))
    limits = _limits(ctx, base, flat)
    groups: dict[str, Group] = {}
    raw_groups = raw.get("groups", {})
    if not isinstance(raw_groups, dict):
        ctx.add((*base, "groups"), raw_groups, "groups is a table of groups")
    else:
        for gname, graw in raw_groups.items():
            group = _group(ctx, name, gname, graw, rules)
            if group is not None:
                groups[gname] = group
    if not ok:
        return None
    assert ctx.doc is not None
    tenant = Tenant(name=name, plan=plan, limits=limits, groups=groups, source=ctx.doc.name)
    _tenant_vs_groups(ctx, tenant, flat)
    return tenant, plan


# --- plans --------------------------------------------------------------------------------

def _effective(value: object) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise _Bad(f"{value.isoformat()} has no UTC offset; write e.g. "
                       "2026-12-01T00:00:00Z")
        return value.astimezone(UTC)
    if isinstance(value, date):
        raise _Bad(f"{value.isoformat()} is a date; write a time with offset, e.g. "
                   f"{value.isoformat()}T00:00:00Z")
    raise _Bad(f"{show(value)} is not a TOML date-time with offset, e.g. "
               "2026-12-01T00:00:00Z (unquoted)")


def _plan(ctx: _Ctx, name: str, raw: object) -> PricePlan | None:
    base: KeyPath = ("plans", name)
    ok = _check_name(ctx, base, name, "plan")
    if not isinstance(raw, dict):
        ctx.add(base, raw, "a plan is a table: [plans.<name>]")
        return None
    for key, value in raw.items():
        if key not in _PLAN_KEYS:
            _unknown(ctx, base, key, value, _PLAN_KEYS)
            ok = False
    currency = raw.get("currency")
    if currency is None:
        ctx.add(base, None, "currency is missing (an ISO 4217 code such as \"EUR\")")
        ok = False
    elif not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
        ctx.add((*base, "currency"), currency,
                f"{show(currency)} is not an ISO 4217 code such as \"EUR\"")
        ok = False
    basis = raw.get("memory_basis", "usage")
    if basis not in _MEMORY_BASES:
        ctx.add((*base, "memory_basis"), basis,
                f"{show(basis)} is not a memory basis (usage, reservation, max)")
        ok = False
    prices: dict[str, Decimal] = {}
    for key in _PRICE_FIELDS:
        if key not in raw:
            if key in _OPTIONAL_PRICES:
                prices[key] = Decimal(0)
            else:
                ctx.add(base, None, f"{key} is missing (a decimal string like \"0.040\")")
                ok = False
            continue
        try:
            prices[key] = _money(raw[key])
        except _Bad as exc:
            ctx.add((*base, key), raw[key], str(exc))
            ok = False
    later: list[tuple[datetime, KeyPath, dict[str, Decimal]]] = []
    raw_prices = raw.get("prices", [])
    if not isinstance(raw_prices, list):
        ctx.add((*base, "prices"), raw_prices,
                "prices is an array of tables: [[plans.<name>.prices]]")
        raw_prices = []
        ok = False
    for i, item in enumerate(raw_prices):
        ipath: KeyPath = (*base, "prices", i)
        if not isinstance(item, dict):
            ctx.add(ipath, item, "a price version is a table with effective and prices")
            ok = False
            continue
        override: dict[str, Decimal] = {}
        when: datetime | None = None
        for key, value in item.items():
            try:
                if key == "effective":
                    when = _effective(value)
                elif key in _PRICE_FIELDS:
                    override[key] = _money(value)
                else:
                    _unknown(ctx, ipath, key, value, ("effective", *_PRICE_FIELDS))
                    ok = False
            except _Bad as exc:
                ctx.add((*ipath, key), value, str(exc))
                ok = False
        if "effective" not in item:
            ctx.add(ipath, None, "effective is missing (e.g. 2026-12-01T00:00:00Z)")
            ok = False
        if when is not None:
            if any(when == w for w, _, _ in later):
                ctx.add((*ipath, "effective"), item.get("effective"),
                        "another price version of this plan has the same effective time")
                ok = False
            later.append((when, ipath, override))
    if not ok:
        return None
    versions = [PriceVersion(effective=None, **prices)]
    current = dict(prices)
    for when, _, override in sorted(later, key=lambda t: t[0]):
        current.update(override)
        versions.append(PriceVersion(effective=when, **current))
    assert isinstance(currency, str)
    return PricePlan(name=name, currency=currency, versions=tuple(versions),
                     memory_basis=cast(MemoryBasis, basis))


# --- the whole policy ---------------------------------------------------------------------

def _decimal_text(d: Decimal) -> str:
    return format(d.normalize(), "f")


def _digest(tenants: Mapping[str, Tenant], plans: Mapping[str, PricePlan]) -> str:
    def rule(r: MatchRule) -> dict[str, object]:
        out: dict[str, object] = {}
        for k, v in r.fields().items():
            out[k] = {"pidns": v.pidns, "init": v.init} if isinstance(v, ContainerMatch) else v
        return out

    canon = {
        "plans": {
            p.name: {
                "currency": p.currency,
                "memory_basis": p.memory_basis,
                "versions": [
                    {"effective": v.effective.isoformat() if v.effective else None,
                     # storage_gib_hour only when priced: a policy from before it keeps
                     # the digest its applied versions were recorded under
                     **{f: _decimal_text(getattr(v, f)) for f in _PRICE_FIELDS
                        if f != "storage_gib_hour" or getattr(v, f)}}
                    for v in p.versions
                ],
            }
            for p in plans.values()
        },
        "tenants": {
            t.name: {
                "plan": t.plan,
                "limits": t.limits.files(),
                "groups": {
                    g.name: {
                        "limits": g.limits.files(),
                        "match": [rule(r) for r in g.match],
                        "oom": {"group_kill": g.oom.group_kill,
                                "actions": list(g.oom.actions),
                                "pressure": [[str(k), v] for k, v in g.oom.pressure],
                                "restart_max": g.oom.restart_max,
                                "restart_backoff_us": g.oom.restart_backoff_us},
                        # only when set: a policy without it keeps its digest
                        **({"storage_max": g.storage_max} if g.storage_max is not None
                           else {}),
                    }
                    for g in t.groups.values()
                },
            }
            for t in tenants.values()
        },
    }
    blob = json.dumps(canon, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


def _in_file_order(problems: list[Problem]) -> list[Problem]:
    """Files in reading order, then by line (problems without a line last, in the order
    they were found): the order an operator fixes them in."""
    rank: dict[str, int] = {}
    for p in problems:
        rank.setdefault(p.file, len(rank))
    return sorted(problems, key=lambda p: (rank[p.file], p.line is None, p.line or 0))


def _build(docs: Sequence[_Doc], problems: list[Problem],
           device_resolver: DeviceResolver | None, given: Sequence[str] = ()) -> Policy:
    ctx = _Ctx(resolver=device_resolver or stat_block_device, problems=problems)
    tenants: dict[str, Tenant] = {}
    plans: dict[str, PricePlan] = {}
    tenant_home: dict[str, _Doc] = {}
    plan_home: dict[str, _Doc] = {}
    wanted_plans: list[tuple[_Doc, str, str]] = []
    rules: list[tuple[_Doc, KeyPath, str, MatchRule]] = []
    for doc in docs:
        ctx.doc = doc
        for key, value in doc.data.items():
            if key not in ("plans", "tenants"):
                _unknown(ctx, (), key, value, ("plans", "tenants"))
        raw_plans = doc.data.get("plans", {})
        if not isinstance(raw_plans, dict):
            ctx.add(("plans",), raw_plans, "plans is a table: [plans.<name>]")
            raw_plans = {}
        for name, raw in raw_plans.items():
            if name in plan_home:
                ctx.add(("plans", name), None, f"plan {name} is already defined in "
                                               f"{plan_home[name].name}")
                continue
            plan_home[name] = doc
            plan = _plan(ctx, name, raw)
            if plan is not None:
                plans[name] = plan
        raw_tenants = doc.data.get("tenants", {})
        if not isinstance(raw_tenants, dict):
            ctx.add(("tenants",), raw_tenants, "tenants is a table: [tenants.<name>]")
            raw_tenants = {}
        for name, raw in raw_tenants.items():
            if name in tenant_home:
                ctx.add(("tenants", name), None,
                        f"tenant {name} is already defined in {tenant_home[name].name}; "
                        "a tenant lives in one file")
                continue
            tenant_home[name] = doc
            got = _tenant(ctx, name, raw, rules)
            if got is not None:
                tenant, plan_name = got
                tenants[name] = tenant
                if plan_name is not None:
                    wanted_plans.append((doc, name, plan_name))
    for doc, tenant_name, plan_name in wanted_plans:
        if plan_name not in plan_home:
            close = difflib.get_close_matches(plan_name, sorted(plan_home), n=1)
            hint = f"; did you mean {close[0]}?" if close else (
                "; no plans are defined" if not plan_home else
                f"; defined plans: {', '.join(sorted(plan_home))}")
            ctx.add(("tenants", tenant_name, "plan"), plan_name,
                    f"plan {show(plan_name)} does not exist{hint}", doc=doc)
    _overlaps(ctx, rules)
    if not tenant_home and not any(p.severity == "error" for p in problems):
        _empty(problems, docs, given)
    problems[:] = _in_file_order(problems)
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity == "warning"]
    if errors:
        raise PolicyInvalid(problems)
    return Policy(tenants=tenants, plans=plans, sources=tuple(d.name for d in docs),
                  digest=_digest(tenants, plans), warnings=tuple(warnings))


def _empty(problems: list[Problem], docs: Sequence[_Doc], given: Sequence[str]) -> None:
    """A policy without tenants is valid (it governs nothing) but rarely meant: a wrong
    path, an empty policy.d, a file whose tables are all commented out (issue 15)."""
    where = ", ".join(given) or ", ".join(d.name for d in docs)
    if not docs:
        problems.append(Problem(where, "", None, "no *.toml policy file found: the policy "
                                "is empty, so governor manages no tenant; check the path, "
                                "or add a file such as tenants.toml", severity="warning"))
        return
    problems.append(Problem(where, "", None, "no tenants defined: the policy is empty, so "
                            "governor manages no tenant; add a [tenants.<name>] table",
                            severity="warning"))


def load_policy(paths: Sequence[str | Path], *,
                device_resolver: DeviceResolver | None = None) -> Policy:
    """Read and validate policy files and ``*.toml`` drop-in directories (name order).

    Raises :class:`PolicyInvalid` carrying every problem found; warnings of a valid policy
    are in :attr:`Policy.warnings`.  ``device_resolver`` maps an ``io.max`` device path to
    ``(major, minor)`` (default: :func:`stat_block_device`).
    """
    problems: list[Problem] = []
    if isinstance(paths, str | Path):
        paths = [paths]
    if not paths:
        raise PolicyInvalid([Problem("", "", None, "no policy file or directory given")])
    docs = _read_paths(paths, problems)
    return _build(docs, problems, device_resolver, [str(p) for p in paths])


def parse_policy(documents: Sequence[tuple[str, str]], *,
                 device_resolver: DeviceResolver | None = None) -> Policy:
    """Validate policy texts given as ``(name, toml_text)`` pairs, in that order (for
    tests, and for callers that hold the text already).  Same result as
    :func:`load_policy`."""
    problems: list[Problem] = []
    docs: list[_Doc] = []
    for name, text in documents:
        if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
            problems.append(Problem(name, "", None, "text is larger than the 1 MiB limit"))
            continue
        doc = _parse_text(name, text, problems)
        if doc is not None:
            docs.append(doc)
    return _build(docs, problems, device_resolver)


def check_policy(paths: Sequence[str | Path], *,
                 device_resolver: DeviceResolver | None = None,
                 ) -> tuple[Policy | None, list[Problem]]:
    """Like :func:`load_policy` but never raises: ``(policy or None, every problem)``."""
    try:
        policy = load_policy(paths, device_resolver=device_resolver)
    except PolicyInvalid as exc:
        return None, list(exc.problems)
    return policy, list(policy.warnings)
