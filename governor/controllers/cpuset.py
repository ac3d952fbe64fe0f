"""The cpuset controller: which CPUs and memory nodes a tenant's or group's tasks may use.

Kernel: Documentation/admin-guide/cgroup-v2.rst, "Cpuset".  ``cpuset.cpus`` and
``cpuset.mems`` take a list (``"0-3,5"``); empty (the default of a new group) means "use
the parent's".  What the tasks really get is in ``cpuset.cpus.effective`` and
``cpuset.mems.effective``: the requested list within the parent's effective one (a child's
effective set is always a subset of its parent's; when they do not meet, the parent's).
systemd: ``AllowedCPUs=`` and ``AllowedMemoryNodes=`` (systemd.resource-control(5), from
244), sent over D-Bus as ``ay`` bitmasks (src/shared/cpu-set-util.c ``cpu_set_to_dbus``).

Nothing here is billed: cpuset is a placement, not a quantity.  The effective lists are
read back for display (``governor_cpuset_cpus``/``_mems`` and the status columns CPUS and
MEMS) on each group's slow tier (governor/metering/tiers.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from governor.controllers.base import (
    BadKeyValue,
    Column,
    Controller,
    FileReader,
    Host,
    Metric,
    PolicyKey,
    Property,
    format_cpu_list,
    parse_cpu_list,
)

#: the first systemd with AllowedCPUs= and AllowedMemoryNodes= (v244, 2019)
SYSTEMD_ALLOWED: Final = 244
#: the most CPUs (or nodes) a list may name: the kernel's NR_CPUS ceiling (CONFIG_NR_CPUS
#: is at most 8192); a number above it cannot be a CPU of any host
MAX_ENTRY: Final = 8191
#: policy key -> (interface file, what it lists, the Host fact, the unit property)
_KEYS: Final = {
    "cpuset.cpus": ("cpuset.cpus", "CPU", "cpus", "AllowedCPUs"),
    "cpuset.mems": ("cpuset.mems", "memory node", "mems", "AllowedMemoryNodes"),
}
#: interface file -> unit property
_PROPERTIES: Final = {file: prop for file, _, _, prop in _KEYS.values()}
#: effective file -> the key of read_effective's result
_EFFECTIVE: Final = (("cpus", "cpuset.cpus.effective"), ("mems", "cpuset.mems.effective"))
#: the longest effective list read (a host with 8192 CPUs, alternate ones: ~24 KiB)
MAX_EFFECTIVE: Final = 64 * 1024


def _show(value: object) -> str:
    """A policy value as the messages quote it (a TOML string in double quotes)."""
    text = json.dumps(value, ensure_ascii=True) if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _as_set(value: object, what: str) -> frozenset[int]:
    """The policy value (a list string or a list of integers) as a set; BadKeyValue
    naming the value otherwise (the loader names the file and key)."""
    example = '"0-3,5" or [0, 1]' if what == "CPU" else '"0" or [0, 1]'
    if isinstance(value, str):
        # ASCII only: str.isdigit() takes other scripts' digits, the kernel does not
        if len(value) > 4096 or not value.isascii() or not value.isprintable():
            raise BadKeyValue(f"{_show(value)} is not a {what} list like {example}")
        try:
            out = parse_cpu_list(value)
        except ValueError as e:
            raise BadKeyValue(f"{_show(value)} is not a {what} list like {example}: "
                              f"{e}") from None
    elif isinstance(value, list):
        if len(value) > MAX_ENTRY + 1:
            raise BadKeyValue(f"a list of {len(value)} entries names more {what}s "
                              f"than any host has")
        items: set[int] = set()
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int) or item < 0:
                raise BadKeyValue(f"{_show(item)} in {_show(value)} is not a {what} number "
                                  f"(0 or more); write e.g. {example}")
            items.add(item)
        out = frozenset(items)
    else:
        raise BadKeyValue(f"{_show(value)} is neither a {what} list string nor a list of "
                          f"numbers; write e.g. {example}")
    if not out:
        raise BadKeyValue(f"{_show(value)} is empty, which the kernel takes as \"the "
                          f"parent's {what}s\"; remove the key instead")
    too_big = [n for n in out if n > MAX_ENTRY]
    if too_big:
        raise BadKeyValue(f"{_show(value)} names {what} {max(too_big)}, above the "
                          f"kernel's limit of {MAX_ENTRY}")
    return out


def _cpu_mask(cpus: frozenset[int]) -> bytes:
    """systemd's ``cpu_set_to_dbus``: bit ``n % 8`` of byte ``n // 8`` for each CPU ``n``
    (empty: no CPUs named, "the parent's")."""
    if not cpus:
        return b""
    mask = bytearray(max(cpus) // 8 + 1)
    for n in cpus:
        mask[n // 8] |= 1 << (n % 8)
    return bytes(mask)


@dataclass(frozen=True)
class Cpuset(Controller):
    """The cpuset controller's declarations (see the module documentation)."""

    generic = True

    def parse(self, key: str, value: object, host: Host) -> list[tuple[str, str]]:
        spec = _KEYS.get(key)
        if spec is None:
            return super().parse(key, value, host)
        file, what, fact, _ = spec
        wanted = _as_set(value, what)
        have: frozenset[int] | None = getattr(host, fact)
        if have is not None:
            missing = wanted - have
            if missing:
                plural = "s" if len(missing) > 1 else ""
                raise BadKeyValue(
                    f"{_show(value)} names {what}{plural} {format_cpu_list(missing)}, "
                    f"which this host does not have (online: "
                    f"{format_cpu_list(have) or 'none'})")
        # the kernel's own spelling: reading the file back gives the same text
        return [(file, format_cpu_list(wanted))]

    def unit_properties(self, file: str, value: str, version: int) -> list[Property] | None:
        prop = _PROPERTIES.get(file)
        if prop is None or version < SYSTEMD_ALLOWED:
            return None
        try:
            entries = parse_cpu_list(value)
        except ValueError:
            return None
        return [(prop, ("ay", _cpu_mask(entries)))]

    def read_effective(self, read: FileReader) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, file in _EFFECTIVE:
            data = read(file)
            if data is None:
                continue
            out[key] = data[:MAX_EFFECTIVE].decode("ascii", "replace").strip()
        return out


def _cpus(values: Mapping[str, int], effective: Mapping[str, str]) -> str | None:
    return effective.get("cpus") or None


def _mems(values: Mapping[str, int], effective: Mapping[str, str]) -> str | None:
    return effective.get("mems") or None


CONTROLLER: Final = Cpuset(
    name="cpuset",
    doc="CPUs and memory nodes a tenant's or group's tasks may run on and allocate from "
        "(cgroup-v2.rst \"Cpuset\"); systemd AllowedCPUs= and AllowedMemoryNodes=",
    keys=(
        PolicyKey("cpuset.cpus", "the CPUs the tasks may run on (cpuset.cpus; systemd "
                  "AllowedCPUs=)", '"0-3,5"'),
        PolicyKey("cpuset.mems", "the memory nodes the tasks may allocate from "
                  "(cpuset.mems; systemd AllowedMemoryNodes=)", '"0"'),
    ),
    # a new group's lists are empty: "the parent's"; writing "" gives that back
    defaults={"cpuset.cpus": "", "cpuset.mems": ""},
    metrics=(
        Metric("governor_cpuset_cpus", "gauge",
               "CPUs the group's tasks may run on (entries of cpuset.cpus.effective).",
               effective="cpus"),
        Metric("governor_cpuset_mems", "gauge",
               "Memory nodes the group's tasks may allocate from (entries of "
               "cpuset.mems.effective).", effective="mems"),
    ),
    columns=(
        Column("CPUS", "cpus", _cpus),
        Column("MEMS", "mems", _mems),
    ),
)

