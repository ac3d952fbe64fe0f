"""The cpuset controller module (governor/controllers/cpuset.py): its policy keys, writes,
unit properties and effective reads."""

from __future__ import annotations

import pytest

from governor.controllers import registry
from governor.controllers.base import BadKeyValue, Host
from governor.controllers.cpuset import CONTROLLER as CPUSET

HOST = Host(cpus=frozenset({0, 1, 2, 3}), mems=frozenset({0}))


def test_registered_as_generic() -> None:
    assert registry.by_name("cpuset") is CPUSET
    assert CPUSET in registry.generic()
    found = registry.policy_key("cpuset.cpus")
    assert found is not None and found[0] is CPUSET
    assert registry.policy_key("cpuset.mems") is not None
    assert registry.policy_key("cpuset.cpus.effective") is None


@pytest.mark.parametrize(("key", "value", "writes"), [
    ("cpuset.cpus", "0-3", [("cpuset.cpus", "0-3")]),
    ("cpuset.cpus", "0,1,2", [("cpuset.cpus", "0-2")]),
    ("cpuset.cpus", "3,1", [("cpuset.cpus", "1,3")]),
    ("cpuset.cpus", " 1 ", [("cpuset.cpus", "1")]),
    ("cpuset.cpus", "0-1,1-2", [("cpuset.cpus", "0-2")]),
    ("cpuset.cpus", [0, 1], [("cpuset.cpus", "0-1")]),
    ("cpuset.cpus", [3, 0, 3], [("cpuset.cpus", "0,3")]),
    ("cpuset.mems", "0", [("cpuset.mems", "0")]),
    ("cpuset.mems", [0], [("cpuset.mems", "0")]),
])
def test_parse_normalises(key: str, value: object, writes: list[tuple[str, str]]) -> None:
    assert CPUSET.parse(key, value, HOST) == writes


@pytest.mark.parametrize(("value", "says"), [
    ("", "empty"),
    ("   ", "empty"),
    ([], "empty"),
    ("a", "not a CPU list"),
    ("1-", "not a CPU list"),
    ("-1", "not a CPU list"),
    ("3-1", "ends before it starts"),
    ("0-99999", "more than 65536"),
    ("1;2", "not a CPU list"),
    ("1\n2", "not a CPU list"),
    ("١", "not a CPU list"),          # an Arabic-Indic digit: str.isdigit() says yes
    ("²", "not a CPU list"),
    ("x" * 5000, "not a CPU list"),
    ([True], "is not a CPU number"),
    ([-1], "is not a CPU number"),
    (["0"], "is not a CPU number"),
    ([1.0], "is not a CPU number"),
    ([10**30], "above the kernel's limit"),
    (1, "neither a CPU list string nor a list"),
    ({"a": 1}, "neither a CPU list string nor a list"),
    (True, "neither a CPU list string nor a list"),
])
def test_parse_refuses(value: object, says: str) -> None:
    with pytest.raises(BadKeyValue, match=says):
        CPUSET.parse("cpuset.cpus", value, Host())


def test_empty_says_remove_the_key() -> None:
    with pytest.raises(BadKeyValue, match="remove the key instead"):
        CPUSET.parse("cpuset.mems", "", HOST)


def test_refuses_what_the_host_lacks() -> None:
    with pytest.raises(BadKeyValue) as e:
        CPUSET.parse("cpuset.cpus", "2-7", HOST)
    assert str(e.value) == ('"2-7" names CPUs 4-7, which this host does not have '
                            "(online: 0-3)")
    with pytest.raises(BadKeyValue, match=r"names memory node 1, which this host does not "
                                          r"have \(online: 0\)"):
        CPUSET.parse("cpuset.mems", [1], HOST)


def test_unknown_host_skips_the_host_check() -> None:
    assert CPUSET.parse("cpuset.cpus", "7", Host()) == [("cpuset.cpus", "7")]
    assert CPUSET.parse("cpuset.mems", "3", Host(cpus=frozenset({0}))) == [
        ("cpuset.mems", "3")]


def test_other_keys_are_not_its_own() -> None:
    with pytest.raises(BadKeyValue):
        CPUSET.parse("cpuset.cpus.partition", "root", HOST)


def test_kernel_defaults_are_empty_lists() -> None:
    assert CPUSET.kernel_default("cpuset.cpus") == ""
    assert CPUSET.kernel_default("cpuset.mems") == ""
    assert CPUSET.kernel_default("cpu.max") is None
    assert registry.kernel_default("cpuset.cpus") == ""


@pytest.mark.parametrize(("value", "mask"), [
    ("0", b"\x01"),
    ("1", b"\x02"),
    ("0-3", b"\x0f"),
    ("0-7", b"\xff"),
    ("8", b"\x00\x01"),
    ("0,9-10", b"\x01\x06"),
    ("0-9", b"\xff\x03"),
    ("63", b"\x00" * 7 + b"\x80"),
    ("", b""),                       # the reset: no CPUs named, the parent's
])
def test_unit_properties_bitmask(value: str, mask: bytes) -> None:
    # systemd's cpu_set_to_dbus: bit n % 8 of byte n // 8 (little-endian)
    assert CPUSET.unit_properties("cpuset.cpus", value, 252) == [
        ("AllowedCPUs", ("ay", mask))]
    assert CPUSET.unit_properties("cpuset.mems", value, 244) == [
        ("AllowedMemoryNodes", ("ay", mask))]


def test_unit_properties_need_systemd_244() -> None:
    assert CPUSET.unit_properties("cpuset.cpus", "1", 243) is None
    assert CPUSET.unit_properties("memory.max", "1", 252) is None


def test_bitmask_marshals_as_dbus_ay() -> None:
    from governor.systemd.bus import msg_set_unit_properties

    props = CPUSET.unit_properties("cpuset.cpus", "1,9", 252)
    assert props is not None
    raw = msg_set_unit_properties("x.slice", True, props).serialise(serial=1)
    # the array: length 2, then the two mask bytes
    assert b"AllowedCPUs\x00\x02ay\x00\x02\x00\x00\x00\x02\x02" in raw


def test_read_effective() -> None:
    files = {"cpuset.cpus.effective": b"0-1\n", "cpuset.mems.effective": b"0\n"}
    assert CPUSET.read_effective(files.get) == {"cpus": "0-1", "mems": "0"}
    # absent file -> key absent (missing is not zero); an empty list is read as it is
    assert CPUSET.read_effective({"cpuset.cpus.effective": b"\n"}.get) == {"cpus": ""}
    assert CPUSET.read_effective({}.get) == {}


def test_read_effective_hostile() -> None:
    big = b"0," * 100_000
    got = CPUSET.read_effective({"cpuset.cpus.effective": big}.get)
    assert len(got["cpus"]) <= 64 * 1024
    got = CPUSET.read_effective({"cpuset.cpus.effective": b"\xff\xfe1"}.get)
    assert got["cpus"].endswith("1")
