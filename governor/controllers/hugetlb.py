"""The hugetlb controller: limits and usage of huge pages, one family of files per page size.

Kernel reference: Documentation/admin-guide/cgroup-v2.rst, "HugeTLB".  For each huge page
size the host offers (``/sys/kernel/mm/hugepages``, named ``"2MB"``, ``"1GB"`` as
mm/hugetlb_cgroup.c mem_fmt names them):

* ``hugetlb.<size>.max`` and ``hugetlb.<size>.rsvd.max`` (reservations, since 5.7): the
  limit in bytes or ``max``; the kernel rounds a written value down to whole pages of that
  size (hugetlb_cgroup_write), so a policy must give whole pages or drift detection would
  read back a different value;
* ``hugetlb.<size>.current`` and ``hugetlb.<size>.rsvd.current``: the bytes in use;
* ``hugetlb.<size>.events``: ``max N``, the allocations that failed on the limit.

A generic controller: its values travel in ``GroupSample.values`` as
``hugetlb.<size>.current``, ``hugetlb.<size>.rsvd_current`` and ``hugetlb.<size>.events_max``
(the ``_`` keeps them apart from the billed ``.current`` keys).  systemd has no hugetlb
property (252), so :meth:`~governor.controllers.base.Controller.unit_properties` is None.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from governor.controllers.base import (
    BadKeyValue,
    Column,
    Controller,
    FileReader,
    Host,
    Metric,
    PolicyKey,
    Quantity,
    ValueReadError,
    hugepage_size_bytes,
)

_SIZE: Final = r"[0-9]{1,7}(?:KB|MB|GB)"
_SIZE_NAME: Final = re.compile(_SIZE)
_MAX_KEY: Final = re.compile(rf"hugetlb\.(?P<size>{_SIZE})\.max")
_RSVD_MAX_KEY: Final = re.compile(rf"hugetlb\.(?P<size>{_SIZE})\.rsvd\.max")

#: the largest limit: the kernel's page counters are signed 64-bit
_SIZE_LIMIT: Final = 2**63 - 1
#: sizes as policy/units.py parse_size takes them: binary suffixes, case-insensitive
_UNITS: Final = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
                 "g": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40}
_VALUE_RE: Final = re.compile(r"\s*(\d{1,30}(?:\.\d{1,30})?)\s*([A-Za-z]{0,3})\s*\Z")
_HINT: Final = 'use "max", bytes, or a number with K, M, G or T'

#: an interface file holding one count of bytes (at most 2^63-1: BigInteger in the store)
_NUMBER: Final = re.compile(rb"(0|[1-9][0-9]{0,18})\n?\Z")
_EVENT_LINE: Final = re.compile(rb"([a-z_]{1,32}) (0|[1-9][0-9]{0,19})\Z")


def _show(value: object) -> str:
    if isinstance(value, str):
        text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in value[:80])
        return f'"{text}{"..." if len(value) > 80 else ""}"'
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


def format_size(size: int) -> str:
    """A size as a policy writes it: the largest binary unit that divides it, or bytes."""
    for suffix, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f'"{size // factor}{suffix}"'
    return str(size)


def human_bytes(n: int) -> str:
    """Bytes in IEC units as ``governor status`` shows them (status/render.py)."""
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(x) < 1024:
            return f"{x:.0f}{unit}" if unit == "B" else f"{x:.1f}{unit}"
        x /= 1024
    return f"{x:.1f}TiB"


def parse_limit(value: object) -> int | None:
    """A limit as policy/units.py parse_size reads it: bytes, or None for ``"max"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise BadKeyValue(f"{_show(value)} is negative; a size is 0 or more bytes")
        if value > _SIZE_LIMIT:
            raise BadKeyValue(f"{_show(value)} is too large (at most 2^63-1 bytes)")
        return value
    if not isinstance(value, str):
        raise BadKeyValue(f"{_show(value)} is not a size; {_HINT}")
    if value.strip().lower() == "max":
        return None
    m = _VALUE_RE.match(value)
    if m is None or m[2].lower() not in _UNITS:
        raise BadKeyValue(f"{_show(value)} is not a size; {_HINT}")
    if "." in m[1] and m[2].lower() in ("", "b"):
        raise BadKeyValue(f"{_show(value)} is not a whole number of bytes")
    size = int(Decimal(m[1]) * _UNITS[m[2].lower()])
    if size > _SIZE_LIMIT:
        raise BadKeyValue(f"{_show(value)} is too large (at most 2^63-1 bytes)")
    return size


def _number(file: str, data: bytes) -> int:
    if _NUMBER.match(data) is None:
        raise ValueReadError(file, "expected a count of bytes", data)
    return int(data)


def _events_max(file: str, data: bytes) -> int:
    """The ``max`` count of ``hugetlb.<size>.events`` (``max N``, one line)."""
    text = data[:-1] if data.endswith(b"\n") else data
    found: int | None = None
    for line in text.split(b"\n"):
        m = _EVENT_LINE.match(line)
        if m is None:
            raise ValueReadError(file, "expected lines like 'max 0'", data)
        if m[1] == b"max":
            if found is not None:
                raise ValueReadError(file, "'max' appears twice", data)
            found = int(m[2])
    if found is None:
        raise ValueReadError(file, "no 'max' line", data)
    if found > _SIZE_LIMIT:
        raise ValueReadError(file, "a count beyond 2^63-1", data)
    return found


def _render_usage(values: Mapping[str, int], effective: Mapping[str, str]) -> str | None:
    used = [v for k, v in values.items() if CURRENT.fullmatch(k)]
    return human_bytes(sum(used)) if used else None


#: the keys of GroupSample.values
CURRENT: Final = re.compile(rf"hugetlb\.(?P<size>{_SIZE})\.current")
RSVD_CURRENT: Final = re.compile(rf"hugetlb\.(?P<size>{_SIZE})\.rsvd_current")
EVENTS_MAX: Final = re.compile(rf"hugetlb\.(?P<size>{_SIZE})\.events_max")


@dataclass(frozen=True)
class Hugetlb(Controller):
    generic = True

    def parse(self, key: str, value: object, host: Host) -> list[tuple[str, str]]:
        m = _MAX_KEY.fullmatch(key) or _RSVD_MAX_KEY.fullmatch(key)
        if m is None:
            raise BadKeyValue(f"{_show(key)} is not a hugetlb key; use hugetlb.<size>.max "
                              f"or hugetlb.<size>.rsvd.max with a size like 2MB")
        size = m["size"]
        sizes = host.hugepage_sizes
        if sizes is not None and size not in sizes:
            have = ", ".join(sizes) if sizes else "none"
            raise BadKeyValue(f"{key}: this host has no {size} huge pages "
                              f"(its huge page sizes: {have})")
        limit = parse_limit(value)
        if limit is None:
            return [(key, "max")]
        page = hugepage_size_bytes(size)
        if limit % page:
            lo, hi = limit - limit % page, limit - limit % page + page
            raise BadKeyValue(
                f"{_show(value)} is not a whole number of {size} pages (the kernel would "
                f"round it down to {lo} bytes); use {format_size(lo)} or {format_size(hi)}")
        return [(key, str(limit))]

    def kernel_default(self, file: str) -> str | None:
        if _MAX_KEY.fullmatch(file) or _RSVD_MAX_KEY.fullmatch(file):
            return "max"
        return None

    def unit_properties(self, file: str, value: str, version: int) -> None:
        # systemd (252) has no hugetlb property: the systemd layout reports these files
        # as unsettable (governor/systemd/units.py)
        return None

    def read_values(self, read: FileReader, host: Host) -> dict[str, int] | None:
        out: dict[str, int] = {}
        for size in host.hugepage_sizes or ():
            if _SIZE_NAME.fullmatch(size) is None:
                raise ValueReadError("hugetlb", "not a huge page size like 2MB",
                                     size.encode("utf-8", "backslashreplace"))
            stem = f"hugetlb.{size}"
            data = read(f"{stem}.current")
            if data is None:
                continue  # not enabled in this group (or the size came since the probe)
            out[f"{stem}.current"] = _number(f"{stem}.current", data)
            data = read(f"{stem}.rsvd.current")
            if data is not None:  # since 5.7
                out[f"{stem}.rsvd_current"] = _number(f"{stem}.rsvd.current", data)
            data = read(f"{stem}.events")
            if data is not None:
                out[f"{stem}.events_max"] = _events_max(f"{stem}.events", data)
        return out or None


CONTROLLER: Final = Hugetlb(
    name="hugetlb",
    doc="huge page limits and usage, per page size",
    keys=(
        PolicyKey("hugetlb.<size>.max", "the most bytes of <size> huge pages the tenant or "
                  "group may fault in (whole pages)", '"64M"', pattern=_MAX_KEY),
        PolicyKey("hugetlb.<size>.rsvd.max", "the most bytes of <size> huge pages it may "
                  "reserve (mmap, shmget; whole pages)", '"64M"', pattern=_RSVD_MAX_KEY),
    ),
    quantities=(
        Quantity("hugetlb_byte_seconds", "hugetlb", "GiB-hour", "hugetlb_gib_hour",
                 2**30 * 3600, "huge pages in use, summed over sizes, integrated over time",
                 method="integral", values=re.compile(r"hugetlb\.[^.]+\.current")),
    ),
    metrics=(
        Metric("governor_hugetlb_usage_bytes", "gauge",
               "Bytes of huge pages of one size in use (hugetlb.<size>.current).",
               values=CURRENT),
        Metric("governor_hugetlb_reserved_bytes", "gauge",
               "Bytes of huge pages of one size reserved (hugetlb.<size>.rsvd.current).",
               values=RSVD_CURRENT),
        Metric("governor_hugetlb_max_events_total", "counter",
               "Huge page allocations refused by hugetlb.<size>.max "
               "(hugetlb.<size>.events max).", values=EVENTS_MAX),
    ),
    columns=(Column("HUGETLB", "hugetlb_bytes", _render_usage),),
)
