"""Units and conversions of the policy format, with reference tables from their sources."""

from __future__ import annotations

import pytest

from governor.policy import units
from governor.policy.units import MAX, CpuMax, UnitError


@pytest.mark.parametrize(("raw", "expected"), [
    (0, 0),
    (4096, 4096),
    ("4096", 4096),
    ("512M", 512 * 2**20),
    ("512m", 512 * 2**20),
    ("4G", 4 * 2**30),
    ("1.5GiB", 3 * 2**29),
    ("64KiB", 65536),
    ("2T", 2 * 2**40),
    ("10 M", 10 * 2**20),
    ("100B", 100),
    ("max", MAX),
    ("MAX", MAX),
])
def test_parse_size(raw: object, expected: object) -> None:
    assert units.parse_size(raw) == expected


@pytest.mark.parametrize(("raw", "fragment"), [
    ("12XB", "is not a size; use bytes or a number with K, M, G or T"),
    (-1, "negative"),
    ("-5M", "negative"),
    (1.5, "is a float"),
    (True, "is not a size"),
    ("1.5", "whole number of bytes"),
    ("", "is not a size"),
    ("9999999T", "too large"),
    (2**64, "too large"),
    ([1], "is not a size"),
])
def test_parse_size_refuses(raw: object, fragment: str) -> None:
    with pytest.raises(UnitError, match=fragment.replace("(", r"\(")):
        units.parse_size(raw)


def test_parse_size_max_can_be_refused() -> None:
    with pytest.raises(UnitError, match="not allowed"):
        units.parse_size("max", allow_max=False)


@pytest.mark.parametrize(("size", "text"), [
    (MAX, "max"), (0, "0"), (1000, "1000"), (1024, "1K"), (512 * 2**20, "512M"),
    (3 * 2**29, "1536M"), (2**30, "1G"), (2**41, "2T"),
])
def test_format_size(size: units.Size, text: str) -> None:
    assert units.format_size(size) == text
    assert units.parse_size(text) == size


@pytest.mark.parametrize(("raw", "expected"), [
    ("1.5", CpuMax(150_000, 100_000)),
    (1.5, CpuMax(150_000, 100_000)),
    (2, CpuMax(200_000, 100_000)),
    ("0.01", CpuMax(1_000, 100_000)),
    ("150000 100000", CpuMax(150_000, 100_000)),
    ("5000 10000", CpuMax(5_000, 10_000)),
    ("max", CpuMax(None, 100_000)),
    ("max 50000", CpuMax(None, 50_000)),
])
def test_parse_cpu_max(raw: object, expected: CpuMax) -> None:
    assert units.parse_cpu_max(raw) == expected


def test_cpu_max_kernel_format() -> None:
    assert CpuMax(150_000, 100_000).kernel() == "150000 100000"
    assert CpuMax(None, 100_000).kernel() == "max 100000"
    assert CpuMax(150_000, 100_000).cores == 1.5


@pytest.mark.parametrize(("raw", "fragment"), [
    ("999 100000", "quota must be at least 1000"),
    ("100000 999", "period must be 1000..1000000"),
    ("100000 1000001", "period must be 1000..1000000"),
    ("0.005", "quota must be at least 1000"),
    (0, "above 0"),
    (-1, "above 0"),
    ("abc", "not a number of cores"),
    ("1 2 3", "QUOTA PERIOD"),
    ("max max", "QUOTA PERIOD"),
    (True, "not a number of cores"),
    (float("nan"), "above 0"),
    (f"{2**45} 100000", "2^44-1"),
])
def test_parse_cpu_max_refuses(raw: object, fragment: str) -> None:
    with pytest.raises(UnitError, match=fragment.replace("^", r"\^")):
        units.parse_cpu_max(raw)


@pytest.mark.parametrize(("raw", "us"), [
    (0, 0), (10_000, 10_000), ("10ms", 10_000), ("1.5ms", 1_500), ("2s", 2_000_000),
    ("250us", 250), ("250", 250), ("1 s", 1_000_000),
])
def test_parse_duration(raw: object, us: int) -> None:
    assert units.parse_duration_us(raw) == us


@pytest.mark.parametrize("raw", ["10 min", "-1ms", -1, "0.5us", 1.5, None])
def test_parse_duration_refuses(raw: object) -> None:
    with pytest.raises(UnitError):
        units.parse_duration_us(raw)


# Reference values from opencontainers/cgroups v0.0.5 utils_test.go,
# TestConvertCPUSharesToCgroupV2Value (the quadratic-on-log2 conversion runc and crun use):
# unset, below min, min, min+1, default, max-1, max, above max.
@pytest.mark.parametrize(("shares", "weight"), [
    (0, 0),
    (1, 1),
    (2, 1),
    (3, 2),
    (1024, 100),
    (262_143, 10_000),
    (262_144, 10_000),
    (262_145, 10_000),
])
def test_shares_to_weight_reference_table(shares: int, weight: int) -> None:
    assert units.shares_to_weight(shares) == weight


def test_shares_to_weight_is_monotonic_and_in_range() -> None:
    weights = [units.shares_to_weight(s) for s in range(2, 262_145, 97)]
    assert weights == sorted(weights)
    assert all(1 <= w <= 10_000 for w in weights)
    # the old linear formula gave 39 for the default 1024 shares; the new one keeps 100
    assert units.shares_to_weight(1024) != 1 + (1024 - 2) * 9999 // 262_142


# Reference values from opencontainers/cgroups TestConvertBlkIOToIOWeightValue
# (0 -> 0, 10 -> 1, 1000 -> 10000) plus the midpoint computed from the same formula.
@pytest.mark.parametrize(("blkio", "weight"), [(0, 0), (10, 1), (500, 4950), (1000, 10_000)])
def test_blkio_weight_to_io_weight(blkio: int, weight: int) -> None:
    assert units.blkio_weight_to_io_weight(blkio) == weight


@pytest.mark.parametrize(("text", "expected"), [
    ("253:0", (253, 0)), ("8:16", (8, 16)), ("/dev/vda", None), ("8:", None),
    ("99999999999:0", None), ("a:b", None),
])
def test_parse_device_number(text: str, expected: tuple[int, int] | None) -> None:
    assert units.parse_device_number(text) == expected


@pytest.mark.parametrize(("value", "text"), [
    ("12XB", '"12XB"'), ('a"b', '"a\\"b"'), (True, "true"), (3, "3"), ("x" * 100, None),
])
def test_show(value: object, text: str | None) -> None:
    shown = units.show(value)
    if text is None:
        assert shown.endswith('..."') and len(shown) < 90
    else:
        assert shown == text
