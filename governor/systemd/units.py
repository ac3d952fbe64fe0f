"""Tenants and groups as systemd units: names, the slice layout, and limits as properties.

Pure functions and a layout, no D-Bus (``governor.systemd.bus`` talks to systemd).

Names follow systemd.unit(5) and ``systemd-escape``: a slice's name spells its place in the
tree with dashes (``a-b.slice`` is ``/a.slice/a-b.slice``), so each policy name is escaped
before it becomes one dash-separated part: ``-`` and every byte outside ``[A-Za-z0-9:_.]``
become ``\\xNN`` (a leading ``.`` too).  A tenant ``acme`` of the subtree ``governor.slice``
is ``governor-acme.slice``; its group ``web`` is ``governor-acme-web.slice``; a tenant
``blue-team`` is ``governor-blue\\x2dteam.slice``.

Limits become unit properties (systemd.resource-control(5)), so ``systemctl show``,
``systemd-cgls`` and ``systemd-cgtop`` show the truth and ``systemctl daemon-reload`` never
undoes one.  What systemd cannot express on a slice (``cpu.max.burst``,
``memory.oom.group``) is reported by :func:`unit_properties` as such; the systemd driver
never writes it behind systemd's back.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from governor.cgroupfs import parse
from governor.cgroupfs.layout import Layout
from governor.cgroupfs.names import check_name
from governor.controllers import registry
from governor.errors import ConfigError, GovernorError

#: the longest unit name: systemd's UNIT_NAME_MAX (src/basic/unit-name.h) is 256 with the
#: terminating NUL
UNIT_NAME_MAX = 255
#: CGROUP_LIMIT_MAX: "infinity" in a resource-control property
INFINITY = 2**64 - 1
#: systemd's default CPU quota period (CPUQuotaPeriodSec= unset)
DEFAULT_PERIOD_US = 100_000
USEC_PER_SEC = 1_000_000

_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.")
_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")

#: (signature, value) as jeepney sends a variant; a property is (name, variant)
DBusValue = tuple[str, object]
Property = tuple[str, DBusValue]


class UnitNameError(GovernorError):
    """A name that cannot become a systemd unit name."""

    exit_code = 1


def escape(name: str) -> str:
    """``systemd-escape NAME`` for one component (no ``/`` in it): ``a-b`` -> ``a\\x2db``."""
    out = []
    for i, ch in enumerate(name):
        if ch in _PLAIN and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode())
    return "".join(out)


def unescape(text: str) -> str:
    """The inverse of :func:`escape` (``\\xNN`` -> the byte)."""
    raw = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)
    return raw.encode("latin-1").decode("utf-8", "strict")


def check_unit_name(name: str, *, what: str) -> str:
    if len(name) > UNIT_NAME_MAX:
        raise UnitNameError(
            f"{what}: the unit name {name[:60]}... has {len(name)} characters, systemd "
            f"allows {UNIT_NAME_MAX}; use shorter tenant and group names (each escaped "
            "character takes four)")
    return name


def expand_slice(name: str) -> str:
    """``a-b.slice`` -> ``a.slice/a-b.slice`` (runc's ExpandSlice): the slice's cgroup
    relative to the mount.  Refuses what systemd refuses: no ``/``, no leading, trailing or
    doubled dash, the ``.slice`` suffix."""
    if not name.endswith(".slice") or "/" in name:
        raise UnitNameError(f"{name!r} is not a slice name (like governor.slice)")
    stem = name[: -len(".slice")]
    if stem == "-":
        return ""
    if not stem or stem.startswith("-") or stem.endswith("-") or "--" in stem:
        raise UnitNameError(f"{name!r}: a slice name has no empty dash-separated part")
    parts = stem.split("-")
    return "/".join("-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


def check_subtree(subtree: str, *, key: str = "governor.subtree",
                  file: str | None = None) -> str:
    """The subtree as the systemd driver needs it: a slice's cgroup path (``governor.slice``
    or ``tenants.slice/tenants-gov.slice``), or the slice's name, which is expanded."""
    s = subtree.strip("/")
    last = s.rsplit("/", 1)[-1]
    try:
        expanded = expand_slice(last)
    except UnitNameError as e:
        raise ConfigError(f"{s!r}: with cgroup_driver = \"systemd\" the subtree is a slice: "
                          f"{e}; e.g. \"governor.slice\"", file=file, key=key) from None
    if s not in (expanded, last):
        raise ConfigError(f"{s!r}: the slice {last} lives at {expanded}; use \"{last}\"",
                          file=file, key=key)
    if not expanded:
        raise ConfigError("the subtree must not be the root slice", file=file, key=key)
    return expanded


class SliceLayout(Layout):
    """The ``systemd`` layout: the subtree, tenants and groups are slices, and placed
    processes live in one scope per group (``<group>-placed.scope``, delegated to
    governor), launched ones in a scope each."""

    driver = "systemd"
    manages_controllers = False
    makes_dirs = False  # systemd makes the slices: governor's are those with its names

    def __init__(self, subtree: str) -> None:
        super().__init__(check_subtree(subtree))
        self.slice = self.subtree.rsplit("/", 1)[-1]
        self.stem = self.slice[: -len(".slice")]
        self._tenant_re = re.compile(re.escape(self.stem) + r"-([^-]+)\.slice\Z")
        self._cache: dict[str, str] = {}

    # -- unit names ----------------------------------------------------------------------
    def unit(self, rel: str) -> str:
        """The slice unit of ``""`` (the subtree), a tenant or a ``tenant/group``."""
        if not rel:
            return self.slice
        parts = rel.split("/")
        if len(parts) > 2:
            raise UnitNameError(f"{rel!r}: only tenants and their groups are slices")
        for p in parts:
            check_name(p)
        name = "-".join([self.stem, *map(escape, parts)]) + ".slice"
        return check_unit_name(name, what=rel)

    def scope(self, rel: str, tag: str = "placed") -> str:
        """The scope unit for processes of group ``rel``: ``tag`` "placed" for those placed
        by rules, ``launch-<pid>`` for a ``governor launch`` run."""
        base = self.unit(rel)[: -len(".slice")]
        return check_unit_name(f"{base}-{escape(tag)}.scope", what=f"{rel} ({tag})")

    def rel_of_unit(self, unit: str) -> str | None:
        """A slice unit name -> ``""``, ``tenant`` or ``tenant/group`` (None: not ours)."""
        if unit == self.slice:
            return ""
        if not unit.startswith(self.stem + "-") or not unit.endswith(".slice"):
            return None
        parts = unit[len(self.stem) + 1: -len(".slice")].split("-")
        if len(parts) > 2:
            return None
        try:
            names = [check_name(unescape(p)) for p in parts]
        except (GovernorError, UnicodeError):
            return None
        return "/".join(names) if self.unit("/".join(names)) == unit else None

    # -- logical -> physical -------------------------------------------------------------
    def path(self, rel: str) -> str:
        if not rel:
            return self.subtree
        hit = self._cache.get(rel)
        if hit is not None:
            return hit
        parts = rel.split("/")
        dirs = [self.unit("/".join(parts[: i + 1])) for i in range(len(parts))]
        out = "/".join([self.subtree, *dirs])
        if len(self._cache) < 65536:
            self._cache[rel] = out
        return out

    def placement_path(self, rel: str) -> str:
        return f"{self.path(rel)}/{self.scope(rel)}"

    def sample_prefix(self, paths: list[str]) -> str | dict[str, str]:
        return {p: self.path(p) for p in paths}

    def unsettable(self, file: str) -> str | None:
        return UNEXPRESSIBLE.get(file) or generic_unexpressible(file)

    # -- physical -> logical -------------------------------------------------------------
    def is_group_dir(self, dirname: str) -> bool:
        return self.rel_of_unit(dirname) not in (None, "")

    def tenant_of_dir(self, dirname: str) -> str | None:
        rel = self.rel_of_unit(dirname)
        return rel if rel and "/" not in rel else None

    def group_of_dir(self, tenant: str, dirname: str) -> str | None:
        rel = self.rel_of_unit(dirname)
        if rel is None or "/" not in rel:
            return None
        t, g = rel.split("/")
        return g if t == tenant else None

    def group_of(self, cgroup_path: str) -> str | None:
        """Any cgroup at or below a group's slice (its scopes) -> ``tenant/group``; the
        tenant's slice (or a scope of it) -> ``tenant``."""
        if not cgroup_path.startswith(self._prefix):
            return None
        parts = cgroup_path[len(self._prefix):].split("/")
        t = self.tenant_of_dir(parts[0])
        if t is None:
            return None
        if len(parts) > 1:
            g = self.group_of_dir(t, parts[1])
            if g is not None:
                return f"{t}/{g}"
        return t

    def placed(self, cgroup_path: str, target: str) -> bool:
        return self.group_of(cgroup_path) == target


# -- limits as unit properties ---------------------------------------------------------------
#: interface file -> property, for the memory sizes and pids
_SIZE_PROPS = {"memory.min": "MemoryMin", "memory.low": "MemoryLow",
               "memory.high": "MemoryHigh", "memory.max": "MemoryMax",
               "memory.swap.max": "MemorySwapMax", "pids.max": "TasksMax"}
#: the io.max keys -> property
_IO_MAX_PROPS = {"rbps": "IOReadBandwidthMax", "wbps": "IOWriteBandwidthMax",
                 "riops": "IOReadIOPSMax", "wiops": "IOWriteIOPSMax"}
#: files the driver cannot hand to systemd on a slice, and why
UNEXPRESSIBLE = {
    "cpu.max.burst": "systemd has no property for cpu.max.burst (CPUQuotaBurst does not "
                     "exist in systemd 252)",
    "memory.oom.group": "systemd sets memory.oom.group only for services and scopes "
                        "(OOMPolicy=), not for slices",
}


def generic_unexpressible(file: str, version: int = 252) -> str | None:
    """Why systemd cannot set ``file`` of a generic controller on a slice: the controller
    declares no unit property for it (hugetlb: systemd has none).  None: not such a file."""
    c = registry.by_name(file.partition(".")[0])
    default = c.kernel_default(file) if c is not None and c.generic else None
    if c is None or default is None or c.unit_properties(file, default, version) is not None:
        return None
    return (f"systemd has no property for {file} (systemd {version} has none for the "
            f"{c.name} controller)")


#: accounting turned on for every slice governor makes, so systemd enables the cpu, io,
#: memory and pids controllers down to it (governor samples all four in every group)
ACCOUNTING: tuple[Property, ...] = (
    ("MemoryAccounting", ("b", True)), ("CPUAccounting", ("b", True)),
    ("IOAccounting", ("b", True)), ("TasksAccounting", ("b", True)))


class Unexpressible(GovernorError):
    """A limit that systemd cannot set on a slice."""

    exit_code = 1


def _limit(text: str) -> int:
    v = parse.parse_limit(text)
    return INFINITY if v == parse.MAX else int(v)


def block_device(majmin: str, *, sys_dev: str | os.PathLike[str] = "/sys/dev/block",
                 dev: str | os.PathLike[str] = "/dev") -> str:
    """``MAJ:MIN`` -> the device node systemd's IO properties take (``/dev/vda``): systemd
    stats the path it is given, so it must be the node itself (no udev symlinks needed)."""
    uevent = Path(sys_dev) / majmin / "uevent"
    try:
        text = uevent.read_text()
    except OSError as e:
        raise Unexpressible(f"block device {majmin}: cannot read {uevent}: "
                            f"{e.strerror} (errno {e.errno})") from e
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "DEVNAME" and value and not value.startswith("/") \
                and ".." not in value.split("/"):
            return str(Path(dev) / value)
    raise Unexpressible(f"block device {majmin}: no DEVNAME in {uevent}")


def cpu_quota_per_sec(quota_us: int, period_us: int) -> int:
    """CPUQuotaPerSecUSec giving exactly ``quota_us`` per ``period_us`` in ``cpu.max``:
    systemd writes ``ceil(per_sec * period / 1s)`` (cgroup_apply_unified_cpu_quota), so the
    floor of the exact ratio round-trips for every period up to 1 s."""
    return quota_us * USEC_PER_SEC // period_us


def unit_properties(file: str, value: str, *, version: int = 252,
                    sys_dev: str | os.PathLike[str] = "/sys/dev/block",
                    dev: str | os.PathLike[str] = "/dev") -> list[Property]:
    """The unit properties that make the kernel hold ``value`` in ``file``.  Raises
    :class:`Unexpressible` when systemd cannot set it on a slice."""
    if file in UNEXPRESSIBLE:
        raise Unexpressible(f"{file}: {UNEXPRESSIBLE[file]}")
    if file in _SIZE_PROPS:
        if file == "memory.min" and version < 240:
            raise Unexpressible(f"memory.min: MemoryMin= needs systemd 240 (this is {version})")
        return [(_SIZE_PROPS[file], ("t", _limit(value)))]
    if file == "cpu.weight":
        return [("CPUWeight", ("t", int(value)))]
    if file == "cpu.max":
        cm = parse.parse_cpu_max(value)
        quota, period = cm.quota, cm.period
        props: list[Property] = []
        if version >= 242:
            props.append(("CPUQuotaPeriodUSec", ("t", int(period))))
        elif period != DEFAULT_PERIOD_US:
            raise Unexpressible(f"cpu.max period {period}: CPUQuotaPeriodSec= needs systemd "
                                f"242 (this is {version})")
        per_sec = INFINITY if quota == parse.MAX else cpu_quota_per_sec(int(quota), period)
        props.append(("CPUQuotaPerSecUSec", ("t", per_sec)))
        return props
    if file == "io.weight":
        dev_, _, weight = value.partition(" ")
        if dev_ != "default":
            return [("IODeviceWeight", ("a(st)", [(block_device(dev_, sys_dev=sys_dev,
                                                                 dev=dev), int(weight))]))]
        return [("IOWeight", ("t", int(weight)))]
    if file == "io.max":
        majmin, _, rest = value.partition(" ")
        node = block_device(majmin, sys_dev=sys_dev, dev=dev)
        props = []
        for item in rest.split():
            key, _, v = item.partition("=")
            if key not in _IO_MAX_PROPS:
                raise Unexpressible(f"io.max: {key}= has no systemd property")
            props.append((_IO_MAX_PROPS[key], ("a(st)", [(node, _limit(v))])))
        return props
    return _controller_properties(file, value, version)


def _controller_properties(file: str, value: str, version: int) -> list[Property]:
    """A registered controller's properties for ``file`` (cpuset.cpus: AllowedCPUs=);
    Unexpressible when none has one for it in this systemd."""
    c = registry.by_name(file.split(".", 1)[0])
    if c is not None:
        props = c.unit_properties(file, value, version)
        if props is not None:
            return props
        raise Unexpressible(f"{file}: systemd {version} has no unit property for it (the "
                            f"{c.name} controller's need a newer systemd: docs/operations.md)")
    raise Unexpressible(f"{file}: governor has no systemd property for it")
