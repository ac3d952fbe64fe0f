"""What one cgroup v2 controller module declares, in one place (issue #17).

A controller module (``governor/controllers/<name>.py``) defines one :class:`Controller`
and :mod:`governor.controllers.registry` lists it.  Everything that used to be spread over
the read and write paths is declared here, and the sampler, planner, store, meter, bills,
exporter and status iterate over the registered controllers:

* **policy keys** (:attr:`Controller.keys`): the keys a tenant or group table may hold,
  each with how its value is checked (against the :class:`Host` the policy is checked on)
  and the ``(interface file, kernel value)`` writes it becomes;
* **writes**: the kernel's default of each file it writes (what a key that left the policy
  is reset to, :meth:`Controller.kernel_default`) and the systemd unit properties that set
  it on a slice (:meth:`Controller.unit_properties`);
* **reads**: the interface files read on every pass and their parsing into named integer
  values (:meth:`Controller.read_values`), and what is read back for display
  (:meth:`Controller.read_effective`, e.g. ``cpuset.cpus.effective``);
* **sample fields**: the counters and gauges a sample carries (:attr:`Controller.counters`,
  :attr:`Controller.gauges`);
* **billable quantities** (:attr:`Controller.quantities`): what a price plan can price;
* **metrics** (:attr:`Controller.metrics`) and **status columns**
  (:attr:`Controller.columns`).

The five controllers of the first wave (memory, cpu, io, pids and pressure) keep their
specialised paths (C accelerators, ``GroupSample`` fields, raw-sample columns): their modules
declare the names those paths use, and the consumers take their tables from the registry.
A controller added since (cpuset, hugetlb) uses the generic path only: its values travel in
``GroupSample.values`` (keys ``"<controller>.<name>"``), are stored in the ``sample_values``
child table, integrated by the meter into ``rollup_values`` and exported and shown from the
declarations below, so adding one touches its own module and one line of the registry.

This module is the bottom layer of the read and write paths: it imports nothing of governor
but :mod:`governor.errors`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Final, Literal

from governor.errors import GovernorError

#: a unit property as the systemd driver sends it: (name, (D-Bus signature, value))
Property = tuple[str, tuple[str, object]]
#: reads one interface file of the group: its bytes, or None when the file does not exist
#: (controller not enabled, kernel without it: missing is not zero)
FileReader = Callable[[str], bytes | None]
Scope = Literal["tenant", "group"]
BOTH: Final[frozenset[Scope]] = frozenset({"tenant", "group"})


class BadKeyValue(GovernorError):
    """A policy value a controller refuses; the message names the value and what would be
    right (the policy loader reports it against the file and key)."""


class ValueReadError(GovernorError):
    """An interface file whose text is not the kernel's format: ``file`` and ``reason``
    (``parse``) as :class:`~governor.cgroupfs.reader.StatFileError` has them."""

    def __init__(self, file: str, why: str, data: bytes) -> None:
        self.file = file
        self.why = why
        self.value = data[:200].decode("utf-8", "backslashreplace")
        super().__init__(f"{file}: not the kernel's format: {why}: {self.value!r}")


@dataclass(frozen=True, slots=True)
class Host:
    """Facts of the host a policy is checked against and a controller reads on.

    ``None``: unknown (the file that tells is missing), checks that need it are skipped.
    ``hugepage_sizes`` are the sizes as the hugetlb files name them (``"2MB"``, ``"1GB"``),
    smallest first.
    """

    cpus: frozenset[int] | None = None
    mems: frozenset[int] | None = None
    hugepage_sizes: tuple[str, ...] | None = None
    #: the controllers the cgroup v2 hierarchy offers (its root's ``cgroup.controllers``)
    controllers: frozenset[str] | None = None

    @classmethod
    def probe(cls, sys_root: str | os.PathLike[str] = "/sys") -> Host:
        """Read the host's online CPUs and memory nodes, its huge page sizes and the
        controllers of the cgroup v2 hierarchy at ``<sys_root>/fs/cgroup`` (None where it
        is not mounted there: a hybrid host's ``unified`` mount is not looked for)."""
        root = os.fspath(sys_root)
        return cls(
            cpus=_read_list(os.path.join(root, "devices/system/cpu/online")),
            mems=_read_list(os.path.join(root, "devices/system/node/online")),
            hugepage_sizes=_hugepage_sizes(os.path.join(root, "kernel/mm/hugepages")),
            controllers=_read_words(os.path.join(root, "fs/cgroup/cgroup.controllers")),
        )


def parse_cpu_list(text: str) -> frozenset[int]:
    """A kernel CPU or node list (``"0-3,8,10-11"``, empty for none) as a set.  Raises
    ValueError naming the bad part."""
    out: set[int] = set()
    text = text.strip()
    if not text:
        return frozenset()
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise ValueError(f"{part!r} is not a number or a range like 0-3")
        a, b = int(lo), int(hi) if dash else int(lo)
        if b < a:
            raise ValueError(f"{part!r} is a range that ends before it starts")
        if b - a > 65536:
            raise ValueError(f"{part!r} is a range of more than 65536 entries")
        out.update(range(a, b + 1))
    return frozenset(out)


def format_cpu_list(values: frozenset[int] | set[int]) -> str:
    """The kernel's compact form of a set of CPUs or nodes (``{0,1,2,5}`` -> ``"0-2,5"``)."""
    items = sorted(values)
    parts: list[str] = []
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        parts.append(str(items[i]) if i == j else f"{items[i]}-{items[j]}")
        i = j + 1
    return ",".join(parts)


def _read_list(path: str) -> frozenset[int] | None:
    try:
        with open(path, encoding="ascii") as f:
            return parse_cpu_list(f.read())
    except (OSError, ValueError):
        return None


def _read_words(path: str) -> frozenset[str] | None:
    try:
        with open(path, encoding="ascii") as f:
            return frozenset(f.read(4096).split())
    except (OSError, ValueError):
        return None


_HP_DIR = re.compile(r"hugepages-([0-9]+)kB\Z")


def hugepage_size_name(kib: int) -> str:
    """The hugetlb files' name of a page size (mm/hugetlb_cgroup.c mem_fmt): ``2048`` KiB is
    ``"2MB"``, ``1048576`` is ``"1GB"``, ``64`` is ``"64KB"``."""
    if kib >= 1 << 20 and kib % (1 << 20) == 0:
        return f"{kib >> 20}GB"
    if kib >= 1 << 10 and kib % (1 << 10) == 0:
        return f"{kib >> 10}MB"
    return f"{kib}KB"


def hugepage_size_bytes(name: str) -> int:
    """Bytes of a page size named as the hugetlb files name it (``"2MB"`` -> 2097152)."""
    m = re.fullmatch(r"([0-9]+)(KB|MB|GB)", name)
    if m is None:
        raise ValueError(f"{name!r} is not a huge page size like 2MB or 1GB")
    return int(m[1]) << {"KB": 10, "MB": 20, "GB": 30}[m[2]]


def _hugepage_sizes(path: str) -> tuple[str, ...] | None:
    try:
        names = os.listdir(path)
    except OSError:
        return None
    kibs = sorted(int(m[1]) for n in names if (m := _HP_DIR.match(n)))
    return tuple(hugepage_size_name(k) for k in kibs)


@dataclass(frozen=True, slots=True)
class PolicyKey:
    """One policy key of a controller.

    ``name`` is the key as a policy writes it; a key family (one key per huge page size)
    gives a ``pattern`` (a regular expression matched against the whole dotted key) and
    ``name`` shows its form (``"hugetlb.<size>.max"``).  ``scopes``: in a tenant's table,
    a group's, or both.  ``example`` is a right value, for the messages.
    """

    name: str
    doc: str
    example: str
    scopes: frozenset[Scope] = BOTH
    pattern: re.Pattern[str] | None = None

    def matches(self, key: str) -> bool:
        return key == self.name if self.pattern is None else bool(self.pattern.fullmatch(key))


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric family: ``name`` (counters with their ``_total``), ``type`` (``counter``
    or ``gauge``), ``help``.

    For a generic controller's values: ``values`` is a regular expression matched against
    the keys of ``GroupSample.values``; its named groups become labels (beside tenant,
    group and node), and ``usec`` renders microseconds as seconds.  For an effective value:
    ``effective`` names a key of :meth:`Controller.read_effective`'s result whose value
    is a CPU or node list; the gauge is the number of entries in it.

    For a first-wave controller's family (rendered by the exporter's fast paths,
    governor/exporter/families.py and its C twin): ``kind`` says where its value comes
    from and ``source`` / ``key`` which one:

    * ``attr``: the reader's ``GroupStats`` attribute ``source`` (``memory_current``);
    * ``key``: key ``key`` of the dict attribute ``source`` (``cpu`` -> ``usage_usec``);
    * ``psi``: the ``total=`` of line ``key`` (``some``, ``full``) of the pressure file of
      resource ``source`` (``memory``), in seconds;
    * ``device``: field ``key`` of each io.stat device (label ``device``);
    * ``limit``: the policy's ``Limits`` attribute ``source`` (``max``: +Inf).
    """

    name: str
    type: Literal["counter", "gauge"]
    help: str
    values: re.Pattern[str] | None = None
    usec: bool = False
    effective: str | None = None
    kind: Literal["attr", "key", "psi", "device", "limit"] | None = None
    source: str | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Quantity:
    """A billable quantity: what a price plan can price.

    ``name`` is its column in usage and rollups (``hugetlb_byte_seconds``), ``resource`` and
    ``unit`` how a bill shows it (``hugetlb``, ``GiB-hour``), ``plan_key`` the price plan's
    key for one unit (``hugetlb_gib_hour``; None: metered and stored, never priced, as
    ``cpu_user_usec``) and ``per_unit`` how many of the stored integer quantity make one
    billed unit (GiB-hour: 2**30 * 3600 byte-seconds).

    ``integral`` (a gauge: the trapezoid over each interval, as memory) or ``increase`` (a
    counter: the difference across each interval) of the sum of the values whose keys
    match ``values``.
    """

    name: str
    resource: str
    unit: str
    plan_key: str | None
    per_unit: int
    doc: str
    #: how a generic controller's quantity is metered (None: a first-wave quantity, metered
    #: by the specialised meter, governor.metering.usage and its C twin)
    method: Literal["integral", "increase"] | None = None
    values: re.Pattern[str] | None = None


@dataclass(frozen=True, slots=True)
class Column:
    """A column of ``governor status``: ``header`` for the table, ``json`` its key in
    ``--format json``; ``render`` takes the group's values and effective values and returns
    the text (``None``: ``-``, nothing known)."""

    header: str
    json: str
    render: Callable[[Mapping[str, int], Mapping[str, str]], str | None]


@dataclass(frozen=True)
class Controller:
    """The declarations of one controller (see the module documentation).

    The methods' defaults fit a controller that has no such part; a controller module
    subclasses and overrides what it has.
    """

    #: the kernel's controller name (``cgroup.controllers``)
    name: str
    doc: str
    keys: tuple[PolicyKey, ...] = ()
    #: interface files read on every sampling pass (first-wave controllers: by the reader)
    pass_files: tuple[str, ...] = ()
    #: GroupSample fields that are counters / gauges (first-wave controllers)
    counters: tuple[str, ...] = ()
    gauges: tuple[str, ...] = ()
    #: interface file -> the kernel's default (what a key that left the policy resets it to)
    defaults: Mapping[str, str] = field(default_factory=dict)
    quantities: tuple[Quantity, ...] = ()
    metrics: tuple[Metric, ...] = ()
    columns: tuple[Column, ...] = ()
    #: whether its values travel in ``GroupSample.values`` (a controller added since the
    #: first wave) rather than fields of their own
    generic: ClassVar[bool] = False

    def key(self, key: str) -> PolicyKey | None:
        """The declaration ``key`` matches, or None."""
        return next((k for k in self.keys if k.matches(key)), None)

    def parse(self, key: str, value: object, host: Host) -> list[tuple[str, str]]:
        """The ``(interface file, kernel value)`` writes of a policy key's value; raises
        :class:`BadKeyValue` naming the value and what would be right."""
        raise BadKeyValue(f"{key}: {self.name} has no generic policy keys")

    def check(self, writes: Mapping[str, str], host: Host) -> list[tuple[str, str]]:
        """Problems among one table's writes taken together: ``(file, message)``."""
        return []

    def kernel_default(self, file: str) -> str | None:
        """The value the kernel gives ``file`` in a new group (None: not one it writes)."""
        return self.defaults.get(file)

    def unit_properties(self, file: str, value: str, version: int) -> list[Property] | None:
        """systemd unit properties that make the kernel hold ``value`` in ``file`` on a
        slice, or None when systemd has none (the driver then writes the file itself in
        the group governor owns below the unit, or refuses: see docs/systemd.md)."""
        return None

    def read_values(self, read: FileReader, host: Host) -> dict[str, int] | None:
        """The generic controller's values of one group on one pass, keyed
        ``"<controller>.<name>"``; None when its files are not there.  Raises
        :class:`ValueReadError` for a file not in the kernel's format."""
        return None

    def read_effective(self, read: FileReader) -> dict[str, str]:
        """Values read back for display (status, exporter), e.g. the effective CPU list."""
        return {}


def value_key(controller: str, name: str) -> str:
    """The key of a generic controller's value in ``GroupSample.values``."""
    return f"{controller}.{name}"
