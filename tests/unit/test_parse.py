"""Parsers, table-driven on real kernel output (Linux 6.1)."""

from __future__ import annotations

import pytest

from governor.cgroupfs import parse
from governor.cgroupfs.parse import MAX, ParseError
from tests.unit.cgroupfs_fake import LEAF_FILES

# this development machine's own mountinfo (a hybrid host), trimmed
HYBRID_MOUNTINFO = """\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
# the sandbox guest's mountinfo (pure cgroup2)
UNIFIED_MOUNTINFO = """\
24 1 0:22 / / rw,relatime - overlay root rw,lowerdir=/lower,upperdir=/upper/u
27 24 0:24 / /sys/fs/cgroup rw,relatime shared:4 - cgroup2 cgroup2 \
rw,nsdelegate,memory_recursiveprot
30 24 0:27 / /mnt/with\\040space rw - tmpfs tmpfs rw
"""


@pytest.mark.parametrize(("text", "expected"), [
    ("max\n", MAX), ("536870912\n", 536870912), ("0\n", 0), (" 42 ", 42),
])
def test_parse_limit(text: str, expected: object) -> None:
    assert parse.parse_limit(text) == expected


@pytest.mark.parametrize("text", ["", "maxx", "12M", "-"])
def test_parse_limit_rejects(text: str) -> None:
    with pytest.raises(ParseError, match="cannot parse"):
        parse.parse_limit(text)


def test_flat_keyed_cpu_stat() -> None:
    got = parse.parse_flat_keyed(LEAF_FILES["cpu.stat"])
    assert got == {"usage_usec": 52083, "user_usec": 31250, "system_usec": 20833,
                   "nr_periods": 0, "nr_throttled": 0, "throttled_usec": 0,
                   "nr_bursts": 0, "burst_usec": 0}


def test_flat_keyed_memory_events_and_stat() -> None:
    ev = parse.parse_flat_keyed(LEAF_FILES["memory.events"])
    assert ev == {"low": 0, "high": 0, "max": 0, "oom": 0, "oom_kill": 0, "oom_group_kill": 0}
    st = parse.parse_flat_keyed(LEAF_FILES["memory.stat"])
    assert st["anon"] == 126976 and st["slab"] == 78232 and len(st) == 30


@pytest.mark.parametrize("text", ["usage_usec\n", "a b c\n", "usage_usec x\n"])
def test_flat_keyed_rejects(text: str) -> None:
    with pytest.raises(ParseError):
        parse.parse_flat_keyed(text, "cpu.stat")


def test_io_stat() -> None:
    got = parse.parse_io_stat(LEAF_FILES["io.stat"] +
                              "8:0 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n")
    assert got["254:0"]["wbytes"] == 67108864
    assert got["254:0"]["rios"] == 256
    assert got["8:0"] == {"rbytes": 4096, "wbytes": 0, "rios": 1, "wios": 0, "dbytes": 0,
                          "dios": 0}
    assert parse.parse_io_stat("") == {}


def test_io_max_nested_with_max() -> None:
    got = parse.parse_nested_keyed("254:0 rbps=max wbps=2097152 riops=max wiops=120\n")
    assert got == {"254:0": {"rbps": MAX, "wbps": 2097152, "riops": MAX, "wiops": 120}}


def test_io_stat_refuses_max_counter() -> None:
    with pytest.raises(ParseError, match="max"):
        parse.parse_io_stat("254:0 rbytes=max\n")


@pytest.mark.parametrize(("text", "default", "devices"), [
    ("default 100\n", 100, {}),
    ("default 250\n254:0 500\n8:16 10\n", 250, {"254:0": 500, "8:16": 10}),
])
def test_io_weight(text: str, default: int, devices: dict[str, int]) -> None:
    w = parse.parse_io_weight(text)
    assert (w.default, w.devices) == (default, devices)


def test_io_weight_needs_default() -> None:
    with pytest.raises(ParseError, match="default"):
        parse.parse_io_weight("254:0 500\n")


@pytest.mark.parametrize(("text", "quota", "period"), [
    ("max 100000\n", MAX, 100000), ("150000 100000\n", 150000, 100000),
    ("20000 100000", 20000, 100000),
])
def test_cpu_max(text: str, quota: object, period: int) -> None:
    c = parse.parse_cpu_max(text)
    assert (c.quota, c.period) == (quota, period)


def test_psi() -> None:
    p = parse.parse_psi(LEAF_FILES["cpu.pressure"])
    assert p.some.total == 1523 and p.full is not None and p.full.total == 1320
    p2 = parse.parse_psi("some avg10=1.50 avg60=0.25 avg300=0.05 total=987654\n")
    assert p2.some.avg10 == 1.5 and p2.full is None


@pytest.mark.parametrize("text", ["", "full avg10=0.00 avg60=0.00 avg300=0.00 total=1\n",
                                  "some avg10=0.00 total=1\n", "some total\n"])
def test_psi_rejects(text: str) -> None:
    with pytest.raises(ParseError):
        parse.parse_psi(text)


def test_pids_and_lists() -> None:
    assert parse.parse_pids("1\n42\n") == [1, 42]
    assert parse.parse_pids("") == []
    assert parse.parse_list("cpuset cpu io memory hugetlb pids rdma misc\n")[-1] == "misc"
    with pytest.raises(ParseError):
        parse.parse_pids("1\nx\n")


def test_mountinfo_hybrid_and_unified() -> None:
    hy = parse.parse_mountinfo(HYBRID_MOUNTINFO)
    assert [m.fstype for m in hy].count("cgroup") == 5
    v2 = [m for m in hy if m.fstype == "cgroup2"]
    assert v2[0].mount_point == "/sys/fs/cgroup/unified"
    un = parse.parse_mountinfo(UNIFIED_MOUNTINFO)
    assert un[1].super_options == ("rw", "nsdelegate", "memory_recursiveprot")
    assert un[2].mount_point == "/mnt/with space"


def test_proc_cgroup() -> None:
    v2 = parse.parse_proc_cgroup("0::/governor.slice/acme/web\n")
    assert v2.unified == "/governor.slice/acme/web" and v2.v1 == {}
    hy = parse.parse_proc_cgroup("12:pids:/user.slice\n4:cpu,cpuacct:/\n0::/init.scope\n")
    assert hy.unified == "/init.scope" and hy.v1["cpuacct"] == "/" and hy.v1["pids"] == \
        "/user.slice"


@pytest.mark.parametrize("name", ["cpu.stat", "memory.events", "memory.stat"])
def test_flat_keyed_bytes_same_as_text(name: str) -> None:
    fast = parse.FlatKeyedBytes(name)
    text = LEAF_FILES[name]
    for data in (text, text, text.replace(" 0\n", " 7\n"), "a 1\n", "", text):
        assert fast(data.encode()) == parse.parse_flat_keyed(data, name)
    assert len(fast.layouts) == 3  # the file's, "a", and the empty one
    for bad in ("usage_usec\n", "a b c\n", "usage_usec x\n", "a 1\na 2 3\n", "a -1\n"):
        try:
            want: object = parse.parse_flat_keyed(bad, name)
        except ParseError as e:
            want = str(e)
        try:
            got: object = fast(bad.encode())
        except ParseError as e:
            got = str(e)
        assert got == want


def test_bytes_parsers_same_as_text() -> None:
    for text in ("270336\n", " 42 ", "0\n", "1_0\n"):
        assert parse.parse_int_bytes(text.encode()) == parse.parse_int(text)
    for bad in ("", "x\n", "12M\n"):
        with pytest.raises(ParseError):
            parse.parse_int_bytes(bad.encode())
    io = LEAF_FILES["io.stat"] + "8:0 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n"
    for text in (io, "", "8:0 rbytes=1 wbytes=2\n", "8:0 rbytes=1 wbytes=2 rios=3 wios=4 "
                 "dbytes=5 dios=6 extra=7\n", io + "8:0 rbytes=9 wbytes=0 rios=0 wios=0 "
                 "dbytes=0 dios=0\n"):
        assert parse.parse_io_stat_bytes(text.encode()) == parse.parse_io_stat(text)
    with pytest.raises(ParseError, match="max"):
        parse.parse_io_stat_bytes(b"8:0 rbytes=max\n")
    cpu = LEAF_FILES["cpu.pressure"]
    for text in (cpu, cpu.split("full")[0], LEAF_FILES["io.pressure"],
                 "some avg10=1.50 avg60=0.25 avg300=0.00 total=99 extra=1\n", cpu + "\n"):
        assert parse.parse_psi_bytes(text.encode()) == parse.parse_psi(text)
    with pytest.raises(ParseError):
        parse.parse_psi_bytes(b"full avg10=0.00 avg60=0.00 avg300=0.00 total=1\n")
