"""What every section of the policy loader shares: key paths and how they are shown,
the parsed documents, the problem collector, the key sets, and the value checkers that raise
:class:`BadValue` for the caller to report once (part of :mod:`governor.policy.loader`)."""

from __future__ import annotations

import difflib
import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Final, TypeAlias

from governor.controllers import memory, registry
from governor.controllers.base import Host, Scope
from governor.errors import GovernorError
from governor.policy import units
from governor.policy.lines import LineIndex
from governor.policy.problems import Problem, Severity, jsonable
from governor.policy.units import Size, UnitError, show

DeviceResolver: TypeAlias = Callable[[str], tuple[int, int]]
PathPart: TypeAlias = str | int
KeyPath: TypeAlias = tuple[PathPart, ...]

# keys of a tenant or group table that describe limits, after flattening dotted keys: the
# first-wave controllers' (governor/controllers/<name>.py), validated by policy/limits.py
SIZE_KEYS: Final = tuple(k.name for k in memory.SIZES)
_LIMIT_KEYS: Final = frozenset(k.name for c in registry.first_wave() for k in c.keys)
GROUP_KEYS: Final = _LIMIT_KEYS | {"storage.max", "oom.actions", "oom.pressure",
                                   "oom.restart_max", "oom.restart_backoff", "match"}
TENANT_KEYS: Final = _LIMIT_KEYS | {"plan", "groups"}
#: keys whose value is a table of their own (not more dotted keys)
_LEAF_TABLES: Final = frozenset({"io.max", "oom.pressure"})
IO_MAX_KEYS: Final = ("rbps", "wbps", "riops", "wiops")
OOM_ACTIONS: Final = ("log", "alert", "restart")
MATCH_FIELDS: Final = ("user", "uid", "group", "gid", "exe", "comm", "cmdline", "cgroup",
                       "container", "on_exec")
PRICE_FIELDS: Final = ("cpu_core_hour", "memory_gib_hour", "io_read_gib", "io_write_gib",
                       "oom_kill", "storage_gib_hour")
#: price keys a plan may leave out: 0 (storage_gib_hour came with issue #19, after plans
#: were written without it)
OPTIONAL_PRICES: Final = frozenset({"oom_kill", "storage_gib_hour"})
#: the registered controllers' price keys (governor.controllers: each metered Quantity's
#: plan_key, e.g. hugetlb_gib_hour), each optional (0)
QUANTITY_PRICES: Final = tuple(q.plan_key for q in registry.quantities()
                               if q.method is not None and q.plan_key is not None)
PLAN_KEYS: Final = ("currency", *PRICE_FIELDS, *QUANTITY_PRICES, "memory_basis", "prices")
MEMORY_BASES: Final = ("usage", "reservation", "max")
_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+\Z")


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
class Doc:
    name: str
    text: str
    data: dict[str, object]
    lines: LineIndex


@dataclass
class Ctx:
    """Collects problems; ``doc`` is the file being validated."""

    resolver: DeviceResolver
    problems: list[Problem] = field(default_factory=list)
    doc: Doc | None = None
    #: the host the generic controllers' keys are checked against (None: probed at the
    #: first such key, so a policy without one never reads the host's files)
    host: Host | None = None

    def facts(self) -> Host:
        """:attr:`host`, probed (:meth:`Host.probe`) the first time it is needed."""
        if self.host is None:
            self.host = Host.probe()
        return self.host

    def add(self, path: Sequence[PathPart], value: object, message: str,
            severity: Severity = "error", *, doc: Doc | None = None) -> None:
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



# --- values -------------------------------------------------------------------------------

class BadValue(GovernorError):
    """A value problem; the message names the value (raised inside, reported once)."""


def check_int(value: object, lo: int, hi: int | None, what: str, extra: str = "") -> int:
    rng = (f"{lo}..{hi}" if hi is not None else f"{lo} or more") + extra
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadValue(f"{show(value)} is not an integer; {what} takes {rng}")
    if value < lo or (hi is not None and value > hi):
        raise BadValue(f"{show(value)} is out of range; {what} takes {rng}")
    return value


def check_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise BadValue(f"{show(value)} is not a string; {what}")
    if not value:
        raise BadValue(f"{what} must not be empty")
    if any(not ch.isprintable() for ch in value):
        raise BadValue(f"{show(value)} contains control characters")
    return value


def check_size(value: object) -> Size:
    try:
        return units.parse_size(value)
    except UnitError as exc:
        raise BadValue(str(exc)) from None


def check_money(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | str):
        if isinstance(value, float):
            raise BadValue(f"{show(value)} is a float; write money as a string, e.g. \"0.040\"")
        raise BadValue(f"{show(value)} is not a price; write a decimal string like \"0.040\"")
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except (InvalidOperation, ValueError):
        raise BadValue(f"{show(value)} is not a decimal number") from None
    if not amount.is_finite():
        raise BadValue(f"{show(value)} is not a finite number")
    if amount < 0:
        raise BadValue(f"{show(value)} is negative; prices are 0 or more")
    exponent = amount.as_tuple().exponent
    if amount != 0 and (amount.adjusted() >= 9 or (isinstance(exponent, int)
                                                    and exponent < -18)):
        raise BadValue(f"{show(value)} is outside 0..999999999 with at most 18 decimals")
    return amount


def generic_key_names(scope: Scope) -> frozenset[str]:
    """The registered generic controllers' keys a table of ``scope`` may hold, as their
    declarations spell them (a family as ``hugetlb.<size>.max``)."""
    return frozenset(k.name for c in registry.generic() for k in c.keys if scope in k.scopes)


def _starts_generic(name: str) -> bool:
    """Whether dotted ``name`` is the start of a generic controller's key (a family's
    ``<...>`` part stands for any one part)."""
    if registry.policy_key(name) is not None:
        return False
    parts = name.split(".")
    for c in registry.generic():
        for k in c.keys:
            kparts = k.name.split(".")
            if len(parts) < len(kparts) and all(
                    kp == p or (kp.startswith("<") and kp.endswith(">"))
                    for p, kp in zip(parts, kparts, strict=False)):
                return True
    return False


def flatten_keys(table: Mapping[str, object], known: frozenset[str]) -> dict[str, object]:
    """Join dotted keys (``memory.max = ...`` is ``{"memory": {"max": ...}}`` to tomllib)
    into flat names, stopping at known leaves and at names no known key continues (the
    registered generic controllers' keys count as known: ``cpuset.cpus``,
    ``hugetlb.2MB.max``)."""
    out: dict[str, object] = {}
    stack: list[tuple[str, object]] = [(k, v) for k, v in table.items()]
    while stack:
        name, value = stack.pop(0)
        if (isinstance(value, dict) and name not in known and name not in _LEAF_TABLES
                and (any(k.startswith(name + ".") for k in known)
                     or _starts_generic(name))):
            stack[0:0] = [(f"{name}.{k}", v) for k, v in value.items()]
            continue
        out[name] = value
    return out


def report_unknown(ctx: Ctx, base: KeyPath, name: str, value: object, known: Iterable[str]) -> None:
    close: list[str] = []
    if isinstance(value, dict) and len(value) == 1:  # memroy.max = ...: compare it whole
        close = difflib.get_close_matches(f"{name}.{next(iter(value))}", sorted(known), n=1,
                                          cutoff=0.8)
    close = close or difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    ctx.add((*base, name), value, f"unknown key {name}{hint}")
