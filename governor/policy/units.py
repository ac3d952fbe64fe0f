"""Units of the policy file: sizes, CPU bandwidth, durations and Docker/Kubernetes conversions.

Every parser takes the raw TOML value (``object``: policy files are hostile input) and either
returns a typed value or raises :class:`UnitError` with a sentence meant for the operator.
``bool`` is refused wherever a number is expected (in Python ``True`` is an ``int``).
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Final, Literal, TypeAlias

from governor.errors import GovernorError


class UnitError(GovernorError, ValueError):
    """A value that is not in the unit expected; the message names the value and the fix."""


class _Max(enum.Enum):
    MAX = "max"

    def __repr__(self) -> str:
        return "MAX"

    def __str__(self) -> str:
        return "max"


#: the kernel's "no limit" (written as ``max`` to the interface file)
MAX: Final = _Max.MAX
MaxT: TypeAlias = Literal[_Max.MAX]
#: a size in bytes, or :data:`MAX`
Size: TypeAlias = int | MaxT

#: largest size accepted: the kernel keeps page counters in a signed 64-bit range
SIZE_LIMIT: Final = 2**63 - 1

_SIZE_UNITS: Final = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10,
    "m": 1 << 20, "mib": 1 << 20,
    "g": 1 << 30, "gib": 1 << 30,
    "t": 1 << 40, "tib": 1 << 40,
}
_SIZE_RE: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*\Z")
_SIZE_HINT: Final = "use bytes or a number with K, M, G or T"


def show(value: object) -> str:
    """Render a policy value the way the operator wrote it: strings in double quotes."""
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        shown = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in escaped)
        return f'"{shown[:80]}{"..." if len(shown) > 80 else ""}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value) if not isinstance(value, int | float) else str(value)
    return text if len(text) <= 80 else text[:80] + "..."


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_size(value: object, *, allow_max: bool = True) -> Size:
    """Parse a size: an int of bytes, ``"max"``, or a string like ``"512M"``, ``"1.5GiB"``.

    Suffixes are binary and case-insensitive: K/KiB = 1024, M/MiB, G/GiB, T/TiB; ``B`` or no
    suffix means bytes.  Fractions are allowed with a suffix and rounded down to whole bytes
    (the kernel rounds to pages anyway).
    """
    if _is_int(value):
        assert isinstance(value, int)
        if value < 0:
            raise UnitError(f"{show(value)} is negative; a size is 0 or more bytes")
        if value > SIZE_LIMIT:
            raise UnitError(f"{show(value)} is too large (at most 2^63-1 bytes)")
        return value
    if isinstance(value, str):
        if value.strip().lower() == "max":
            if not allow_max:
                raise UnitError(f"{show(value)} is not allowed here; give a size")
            return MAX
        m = _SIZE_RE.match(value)
        if m is None or m.group(2).lower() not in _SIZE_UNITS:
            if value.strip().startswith("-"):
                raise UnitError(f"{show(value)} is negative; a size is 0 or more bytes")
            raise UnitError(f"{show(value)} is not a size; {_SIZE_HINT}")
        number, unit = m.group(1), m.group(2).lower()
        if "." in number and unit in ("", "b"):
            raise UnitError(f"{show(value)} is not a whole number of bytes")
        size = int(Decimal(number) * _SIZE_UNITS[unit])
        if size > SIZE_LIMIT:
            raise UnitError(f"{show(value)} is too large (at most 2^63-1 bytes)")
        return size
    if isinstance(value, float):
        raise UnitError(f"{show(value)} is a float; {_SIZE_HINT} (as a string)")
    raise UnitError(f"{show(value)} is not a size; {_SIZE_HINT}")


def format_size(size: Size) -> str:
    """Format a size for people: the largest binary unit that divides it exactly, or bytes."""
    if size is MAX:
        return "max"
    for suffix, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{suffix}"
    return str(size)


# --- CPU bandwidth ------------------------------------------------------------------------

#: the kernel's default and bounds for cpu.max's period (kernel/sched/core.c:
#: min_cfs_quota_period = 1ms, max_cfs_quota_period = 1s) and the least quota (1ms)
DEFAULT_PERIOD_US: Final = 100_000
MIN_PERIOD_US: Final = 1_000
MAX_PERIOD_US: Final = 1_000_000
MIN_QUOTA_US: Final = 1_000
#: kernel/sched/core.c: max_cfs_runtime = MAX_BW (2^(64-BW_SHIFT)-1 with BW_SHIFT 20) in us
MAX_QUOTA_US: Final = 2**44 - 1


@dataclass(frozen=True, slots=True)
class CpuMax:
    """cpu.max: ``quota_us`` of CPU time per ``period_us``; ``quota_us`` None means ``max``."""

    quota_us: int | None
    period_us: int = DEFAULT_PERIOD_US

    def kernel(self) -> str:
        """The line written to cpu.max: ``"150000 100000"`` or ``"max 100000"``."""
        quota = "max" if self.quota_us is None else str(self.quota_us)
        return f"{quota} {self.period_us}"

    @property
    def cores(self) -> float | None:
        """The limit in cores (quota / period), None when unlimited."""
        return None if self.quota_us is None else self.quota_us / self.period_us


def _check_period(period: int, raw: object) -> None:
    if not MIN_PERIOD_US <= period <= MAX_PERIOD_US:
        raise UnitError(f"{show(raw)}: the period must be {MIN_PERIOD_US}..{MAX_PERIOD_US} us,"
                        f" not {period}")


def _check_quota(quota: int, raw: object) -> None:
    if quota < MIN_QUOTA_US:
        raise UnitError(f"{show(raw)}: the quota must be at least {MIN_QUOTA_US} us (1ms), "
                        f"not {quota}")
    if quota > MAX_QUOTA_US:
        raise UnitError(f"{show(raw)}: the quota is above the kernel's limit of 2^44-1 us")


def cores_to_cpu_max(cores: object) -> CpuMax:
    """Docker's ``--cpus`` / a number of cores -> cpu.max with the default 100ms period.

    ``1.5`` -> ``CpuMax(150000, 100000)``, i.e. ``cpu.max = "150000 100000"``.
    """
    raw = cores
    if isinstance(cores, str):
        try:
            cores = Decimal(cores.strip())
        except InvalidOperation:
            raise UnitError(f"{show(raw)} is not a number of cores") from None
    if isinstance(cores, bool) or not isinstance(cores, int | float | Decimal):
        raise UnitError(f"{show(raw)} is not a number of cores")
    dec = Decimal(str(cores)) if isinstance(cores, float) else Decimal(cores)
    if not dec.is_finite() or dec <= 0:
        raise UnitError(f"{show(raw)}: the number of cores must be above 0")
    if dec > MAX_QUOTA_US:
        raise UnitError(f"{show(raw)} is too many cores")
    quota = int((dec * DEFAULT_PERIOD_US).to_integral_value())
    _check_quota(quota, raw)
    return CpuMax(quota, DEFAULT_PERIOD_US)


def parse_cpu_max(value: object) -> CpuMax:
    """Parse cpu.max: cores (``1.5``, ``"1.5"``), ``"QUOTA PERIOD"`` in us, ``"max"``, or
    ``"max PERIOD"``.  Ranges: period 1000..1000000 us, quota at least 1000 us."""
    if isinstance(value, str):
        parts = value.split()
        if len(parts) == 1 and parts[0].lower() == "max":
            return CpuMax(None, DEFAULT_PERIOD_US)
        if len(parts) == 2:
            quota_s, period_s = parts
            if not period_s.isdigit() or not (quota_s.isdigit() or quota_s.lower() == "max"):
                raise UnitError(f"{show(value)} is not \"QUOTA PERIOD\" in microseconds, "
                                "\"max\", or a number of cores")
            period = int(period_s)
            _check_period(period, value)
            if quota_s.lower() == "max":
                return CpuMax(None, period)
            quota = int(quota_s)
            _check_quota(quota, value)
            return CpuMax(quota, period)
        if len(parts) == 1:
            return cores_to_cpu_max(value)
        raise UnitError(f"{show(value)} is not \"QUOTA PERIOD\" in microseconds, \"max\", "
                        "or a number of cores")
    return cores_to_cpu_max(value)


# --- durations ----------------------------------------------------------------------------

_DURATION_RE: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(us|µs|ms|s)?\s*\Z")
_DURATION_US: Final = {None: 1, "us": 1, "µs": 1, "ms": 1_000, "s": 1_000_000}


def parse_duration_us(value: object) -> int:
    """Parse a duration to whole microseconds: an int (microseconds) or a string with ``us``,
    ``ms`` or ``s`` (``"10ms"`` -> 10000; a bare number string is microseconds)."""
    if _is_int(value):
        assert isinstance(value, int)
        if value < 0:
            raise UnitError(f"{show(value)} is negative; a duration is 0 or more")
        return value
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m is None:
            raise UnitError(f"{show(value)} is not a duration; use microseconds or a number "
                            "with us, ms or s")
        us = Decimal(m.group(1)) * _DURATION_US[m.group(2)]
        if us != us.to_integral_value():
            raise UnitError(f"{show(value)} is not a whole number of microseconds")
        return int(us)
    raise UnitError(f"{show(value)} is not a duration; use microseconds or a number with "
                    "us, ms or s")


# --- Docker / Kubernetes conversions ------------------------------------------------------

SHARES_MIN: Final = 2
SHARES_MAX: Final = 262_144
WEIGHT_MIN: Final = 1
WEIGHT_MAX: Final = 10_000
BLKIO_MIN: Final = 10
BLKIO_MAX: Final = 1_000


def shares_to_weight(shares: int) -> int:
    """Convert cgroup v1 ``cpu.shares`` (Docker ``--cpu-shares``, Kubernetes CPU requests)
    to cgroup v2 ``cpu.weight`` with the formula runc and crun use today.

    Source: opencontainers/cgroups ``ConvertCPUSharesToCgroupV2Value`` (utils.go, since
    v0.0.2; runc PR #4785 "use a quadratic conversion", crun issue #1721, prompted by
    kubernetes issue #131216).  The old linear formula ``1 + (shares-2)*9999/262142`` mapped
    the default 1024 shares to weight 39, far below the v2 default 100; the current one fits
    a quadratic through the three anchor points on a log scale::

        shares 0            -> 0 (unset)
        shares <= 2         -> 1
        shares >= 262144    -> 10000
        otherwise: l = log2(shares)
                   weight = ceil(10 ** ((l*l + 125*l) / 612 - 7/34))

    so 2 -> 1, 1024 -> 100 and 262144 -> 10000 (min, default and max of both scales).
    """
    if shares == 0:
        return 0
    if shares <= SHARES_MIN:
        return WEIGHT_MIN
    if shares >= SHARES_MAX:
        return WEIGHT_MAX
    lg = math.log2(shares)
    exponent = (lg * lg + 125 * lg) / 612.0 - 7.0 / 34.0
    return math.ceil(10**exponent)


def blkio_weight_to_io_weight(blkio_weight: int) -> int:
    """Convert a Docker/cgroup v1 ``blkio.weight`` (10..1000) to cgroup v2 ``io.weight``
    (1..10000), linearly, as runc does.

    Source: opencontainers/cgroups ``ConvertBlkIOToIOWeightValue`` (utils.go)::

        io.weight = 1 + (blkio_weight - 10) * 9999 // 990

    so 10 -> 1, 500 -> 4950, 1000 -> 10000; 0 (unset) stays 0.
    """
    if blkio_weight == 0:
        return 0
    return 1 + (blkio_weight - BLKIO_MIN) * 9999 // 990


def parse_device_number(text: str) -> tuple[int, int] | None:
    """``"253:0"`` -> ``(253, 0)``; None when ``text`` is not ``MAJ:MIN``."""
    m = re.fullmatch(r"(\d{1,10}):(\d{1,10})", text)
    if m is None:
        return None
    major, minor = int(m.group(1)), int(m.group(2))
    if major >= 2**32 or minor >= 2**32:
        return None
    return major, minor
