"""The hugetlb controller's declarations (governor/controllers/hugetlb.py): its policy keys'
parsing against the host, its reads of real kernel text, its metrics' value patterns, its
billable quantity and status column, and the systemd layout's refusal of its files."""

from __future__ import annotations

import pytest

from governor.controllers import registry
from governor.controllers.base import BadKeyValue, Host, ValueReadError
from governor.controllers.hugetlb import CONTROLLER as HUGETLB
from governor.systemd.units import SliceLayout, generic_unexpressible

HOST = Host(hugepage_sizes=("2MB", "1GB"))


def test_registered_as_a_generic_controller() -> None:
    assert registry.by_name("hugetlb") is HUGETLB
    assert HUGETLB in registry.generic()
    c, k = registry.policy_key("hugetlb.2MB.max") or (None, None)
    assert c is HUGETLB and k is not None and k.name == "hugetlb.<size>.max"
    c, k = registry.policy_key("hugetlb.1GB.rsvd.max") or (None, None)
    assert c is HUGETLB and k is not None and k.name == "hugetlb.<size>.rsvd.max"
    assert registry.policy_key("hugetlb.2MB.current") is None
    assert registry.policy_key("hugetlb.2MB.max.x") is None
    assert registry.policy_key("hugetlb..max") is None


@pytest.mark.parametrize(("key", "value", "writes"), [
    ("hugetlb.2MB.max", "4M", [("hugetlb.2MB.max", "4194304")]),
    ("hugetlb.2MB.max", "64MiB", [("hugetlb.2MB.max", "67108864")]),
    ("hugetlb.2MB.max", 2097152, [("hugetlb.2MB.max", "2097152")]),
    ("hugetlb.2MB.max", 0, [("hugetlb.2MB.max", "0")]),
    ("hugetlb.2MB.max", "max", [("hugetlb.2MB.max", "max")]),
    ("hugetlb.2MB.max", " MAX ", [("hugetlb.2MB.max", "max")]),
    ("hugetlb.1GB.max", "2G", [("hugetlb.1GB.max", "2147483648")]),
    ("hugetlb.1GB.rsvd.max", "1.5T", [("hugetlb.1GB.rsvd.max", str(1536 << 30))]),
    ("hugetlb.2MB.rsvd.max", "max", [("hugetlb.2MB.rsvd.max", "max")]),
])
def test_parse(key: str, value: object, writes: list[tuple[str, str]]) -> None:
    assert HUGETLB.parse(key, value, HOST) == writes


@pytest.mark.parametrize(("value", "message"), [
    ("5M", '"5M" is not a whole number of 2MB pages (the kernel would round it down to '
           '4194304 bytes); use "4M" or "6M"'),
    (1, '1 is not a whole number of 2MB pages (the kernel would round it down to 0 bytes); '
        'use 0 or "2M"'),
    ("-2M", '"-2M" is not a size'),
    (-2097152, "-2097152 is negative"),
    (True, "True is not a size"),
    (2.0, "2.0 is not a size"),
    ("2 parsecs", '"2 parsecs" is not a size'),
    ("1.5", '"1.5" is not a whole number of bytes'),
    ("9" * 40, "is not a size"),
    ("8E", '"8E" is not a size'),
    ("9000000T", "is too large (at most 2^63-1 bytes)"),
    (2**63, "is too large"),
    ("4M\n; rm -rf", "is not a size"),
    (None, "None is not a size"),
])
def test_parse_refuses(value: object, message: str) -> None:
    with pytest.raises(BadKeyValue) as e:
        HUGETLB.parse("hugetlb.2MB.max", value, HOST)
    assert message in str(e.value)


def test_parse_refuses_a_size_the_host_lacks_naming_those_it_has() -> None:
    with pytest.raises(BadKeyValue, match=r"this host has no 16GB huge pages \(its huge "
                                          r"page sizes: 2MB, 1GB\)"):
        HUGETLB.parse("hugetlb.16GB.max", "16G", HOST)
    with pytest.raises(BadKeyValue, match=r"sizes: none\)"):
        HUGETLB.parse("hugetlb.2MB.max", "2M", Host(hugepage_sizes=()))


def test_parse_with_an_unknown_host_skips_the_size_check() -> None:
    assert HUGETLB.parse("hugetlb.16GB.max", "16G", Host()) == [
        ("hugetlb.16GB.max", str(16 << 30))]
    # the whole-page check still holds: the size names its page
    with pytest.raises(BadKeyValue, match="whole number of 16GB pages"):
        HUGETLB.parse("hugetlb.16GB.max", "1G", Host())


def test_parse_refuses_a_key_not_of_the_family() -> None:
    with pytest.raises(BadKeyValue, match="not a hugetlb key"):
        HUGETLB.parse("hugetlb.2MB.current", "2M", HOST)


def test_kernel_default_and_unit_properties() -> None:
    assert HUGETLB.kernel_default("hugetlb.2MB.max") == "max"
    assert HUGETLB.kernel_default("hugetlb.1GB.rsvd.max") == "max"
    assert HUGETLB.kernel_default("hugetlb.2MB.current") is None
    assert registry.kernel_default("hugetlb.2MB.max") == "max"
    assert HUGETLB.unit_properties("hugetlb.2MB.max", "4194304", 252) is None


def test_the_systemd_layout_reports_the_limits_unsettable() -> None:
    lay = SliceLayout("governor.slice")
    why = lay.unsettable("hugetlb.2MB.max")
    assert why == ("systemd has no property for hugetlb.2MB.max (systemd 252 has none "
                   "for the hugetlb controller)")
    assert lay.unsettable("hugetlb.1GB.rsvd.max") is not None
    # first-wave files are as they were
    assert lay.unsettable("memory.max") is None
    assert lay.unsettable("cpu.max.burst") is not None
    assert generic_unexpressible("hugetlb.2MB.current") is None
    assert generic_unexpressible("nosuch.max") is None


class Files:
    """A group's interface files as the kernel writes them; None: absent."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.asked: list[str] = []

    def __call__(self, name: str) -> bytes | None:
        self.asked.append(name)
        return self.files.get(name)


def test_read_values_of_real_kernel_text() -> None:
    read = Files({
        "hugetlb.2MB.current": b"4194304\n", "hugetlb.2MB.rsvd.current": b"6291456\n",
        "hugetlb.2MB.events": b"max 3\n", "hugetlb.1GB.current": b"0\n",
        "hugetlb.1GB.rsvd.current": b"0\n", "hugetlb.1GB.events": b"max 0\n",
    })
    assert HUGETLB.read_values(read, HOST) == {
        "hugetlb.2MB.current": 4194304, "hugetlb.2MB.rsvd_current": 6291456,
        "hugetlb.2MB.events_max": 3, "hugetlb.1GB.current": 0,
        "hugetlb.1GB.rsvd_current": 0, "hugetlb.1GB.events_max": 0,
    }


def test_read_values_before_5_7_has_no_reservations() -> None:
    read = Files({"hugetlb.2MB.current": b"0\n", "hugetlb.2MB.events": b"max 0\n"})
    assert HUGETLB.read_values(read, Host(hugepage_sizes=("2MB",))) == {
        "hugetlb.2MB.current": 0, "hugetlb.2MB.events_max": 0}


def test_read_values_none_when_not_enabled_or_no_sizes() -> None:
    read = Files({})
    assert HUGETLB.read_values(read, HOST) is None
    assert read.asked == ["hugetlb.2MB.current", "hugetlb.1GB.current"]
    assert HUGETLB.read_values(Files({"hugetlb.2MB.current": b"0\n"}), Host()) is None


@pytest.mark.parametrize(("files", "file"), [
    ({"hugetlb.2MB.current": b"-1\n"}, "hugetlb.2MB.current"),
    ({"hugetlb.2MB.current": b"4M\n"}, "hugetlb.2MB.current"),
    ({"hugetlb.2MB.current": b""}, "hugetlb.2MB.current"),
    ({"hugetlb.2MB.current": b"1 2\n"}, "hugetlb.2MB.current"),
    ({"hugetlb.2MB.current": b"99999999999999999999\n"}, "hugetlb.2MB.current"),
    ({"hugetlb.2MB.current": b"0\n", "hugetlb.2MB.rsvd.current": b"x\n"},
     "hugetlb.2MB.rsvd.current"),
    ({"hugetlb.2MB.current": b"0\n", "hugetlb.2MB.events": b"max\n"}, "hugetlb.2MB.events"),
    ({"hugetlb.2MB.current": b"0\n", "hugetlb.2MB.events": b"low 1\n"}, "hugetlb.2MB.events"),
    ({"hugetlb.2MB.current": b"0\n", "hugetlb.2MB.events": b"max 1\nmax 2\n"},
     "hugetlb.2MB.events"),
    ({"hugetlb.2MB.current": b"0\n", "hugetlb.2MB.events": b"max 1\x00\n"},
     "hugetlb.2MB.events"),
    ({"hugetlb.2MB.current": b"0\n", "hugetlb.2MB.events": b"max 99999999999999999999\n"},
     "hugetlb.2MB.events"),
])
def test_read_values_refuses_text_not_the_kernels(files: dict[str, bytes], file: str) -> None:
    with pytest.raises(ValueReadError) as e:
        HUGETLB.read_values(Files(files), Host(hugepage_sizes=("2MB",)))
    assert e.value.file == file


@pytest.mark.parametrize("size", ["../../etc/passwd", "2MB/x", "2 MB", ""])
def test_read_values_refuses_a_hostile_size_before_reading(size: str) -> None:
    read = Files({})
    with pytest.raises(ValueReadError, match="not a huge page size"):
        HUGETLB.read_values(read, Host(hugepage_sizes=(size,)))
    assert read.asked == []


def test_metrics_match_their_keys_with_a_size_label() -> None:
    by_name = {m.name: m for m in HUGETLB.metrics}
    assert {n: m.type for n, m in by_name.items()} == {
        "governor_hugetlb_usage_bytes": "gauge",
        "governor_hugetlb_reserved_bytes": "gauge",
        "governor_hugetlb_max_events_total": "counter"}
    cases = {"governor_hugetlb_usage_bytes": "hugetlb.2MB.current",
             "governor_hugetlb_reserved_bytes": "hugetlb.2MB.rsvd_current",
             "governor_hugetlb_max_events_total": "hugetlb.2MB.events_max"}
    keys = set(cases.values())
    for name, key in cases.items():
        pattern = by_name[name].values
        assert pattern is not None
        m = pattern.fullmatch(key)
        assert m is not None and m.groupdict() == {"size": "2MB"}
        assert [k for k in keys if pattern.fullmatch(k)] == [key]


def test_quantity_sums_current_over_sizes_only() -> None:
    (q,) = HUGETLB.quantities
    assert (q.name, q.resource, q.unit, q.plan_key, q.per_unit, q.method) == (
        "hugetlb_byte_seconds", "hugetlb", "GiB-hour", "hugetlb_gib_hour", 2**30 * 3600,
        "integral")
    assert q.values is not None
    keys = ["hugetlb.2MB.current", "hugetlb.1GB.current", "hugetlb.2MB.rsvd_current",
            "hugetlb.2MB.events_max"]
    assert [k for k in keys if q.values.fullmatch(k)] == keys[:2]


def test_status_column() -> None:
    (col,) = HUGETLB.columns
    assert (col.header, col.json) == ("HUGETLB", "hugetlb_bytes")
    assert col.render({"hugetlb.2MB.current": 4194304, "hugetlb.1GB.current": 1 << 30,
                       "hugetlb.2MB.events_max": 7}, {}) == "1.0GiB"
    assert col.render({"hugetlb.2MB.current": 4194304}, {}) == "4.0MiB"
    assert col.render({"hugetlb.2MB.current": 0}, {}) == "0B"
    assert col.render({}, {}) is None
    assert col.render({"hugetlb.2MB.events_max": 1}, {}) is None
