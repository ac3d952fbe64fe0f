"""The systemd driver's pure parts: unit names, the slice layout, limits as properties, the
plan under systemd, the driver's calls (against a bus fake we own), and the driver choice.

What systemd does with the calls is tested with systemd as PID 1 (tests/systemd/)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.layout import Layout
from governor.config import Config
from governor.driver import check_cgroupfs_allowed, choose, layout_for
from governor.enforce import desired_state, make_plan
from governor.enforce.apply import apply_plan
from governor.errors import CgroupError, ConfigError, GovernorError
from governor.policy import parse_policy
from governor.systemd.driver import SystemdDriver
from governor.systemd.units import (
    INFINITY,
    SliceLayout,
    Unexpressible,
    UnitNameError,
    block_device,
    check_subtree,
    escape,
    expand_slice,
    unescape,
    unit_properties,
)
from tests.unit.cgroupfs_fake import LEAF_FILES, create_child

NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.@:+-]{0,63}", fullmatch=True)


# -- names ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "escaped"), [
    ("acme", "acme"), ("blue-team", "blue\\x2dteam"), ("a@b", "a\\x40b"), ("a+b", "a\\x2bb"),
    ("v1.2", "v1.2"), ("x:y_z", "x:y_z"), (".hidden", "\\x2ehidden"), ("é", "\\xc3\\xa9"),
])
def test_escape_matches_systemd_escape(name: str, escaped: str) -> None:
    # the right column is what `systemd-escape NAME` prints (systemd 252)
    assert escape(name) == escaped
    assert unescape(escaped) == name


@given(NAME)
def test_escape_round_trips_and_leaves_no_dash(name: str) -> None:
    e = escape(name)
    assert "-" not in e and "/" not in e and unescape(e) == name


@pytest.mark.parametrize(("name", "path"), [
    ("governor.slice", "governor.slice"),
    ("a-b.slice", "a.slice/a-b.slice"),
    ("a-b-c.slice", "a.slice/a-b.slice/a-b-c.slice"),
    ("-.slice", ""),
])
def test_expand_slice(name: str, path: str) -> None:
    assert expand_slice(name) == path


@pytest.mark.parametrize("bad", ["governor", "a--b.slice", "-a.slice", "a-.slice",
                                 "a/b.slice", ".slice", "x.scope"])
def test_expand_slice_refuses(bad: str) -> None:
    with pytest.raises(UnitNameError):
        expand_slice(bad)


@pytest.mark.parametrize(("subtree", "path"), [
    ("governor.slice", "governor.slice"), ("/governor.slice/", "governor.slice"),
    ("tenants-gov.slice", "tenants.slice/tenants-gov.slice"),
    ("tenants.slice/tenants-gov.slice", "tenants.slice/tenants-gov.slice"),
])
def test_check_subtree(subtree: str, path: str) -> None:
    assert check_subtree(subtree) == path


@pytest.mark.parametrize(("subtree", "says"), [
    ("governor", "is a slice"), ("system.slice/governor.service/tenants", "is a slice"),
    ("other.slice/tenants-gov.slice", "lives at tenants.slice/tenants-gov.slice"),
    ("-.slice", "root slice"),
])
def test_check_subtree_errors_name_key_and_fix(subtree: str, says: str) -> None:
    with pytest.raises(ConfigError) as e:
        check_subtree(subtree, file="/etc/governor/config.toml")
    assert says in str(e.value) and "governor.subtree" in str(e.value)
    assert "/etc/governor/config.toml" in str(e.value)


# -- the layout -----------------------------------------------------------------------------
def test_slice_layout_paths_and_units() -> None:
    lay = SliceLayout("governor.slice")
    assert lay.path("") == "governor.slice"
    assert lay.path("acme") == "governor.slice/governor-acme.slice"
    assert lay.path("acme/web") == \
        "governor.slice/governor-acme.slice/governor-acme-web.slice"
    assert lay.path("blue-team/a@b") == ("governor.slice/governor-blue\\x2dteam.slice/"
                                         "governor-blue\\x2dteam-a\\x40b.slice")
    assert lay.placement_path("acme/web").endswith(
        "governor-acme-web.slice/governor-acme-web-placed.scope")
    assert lay.scope("acme/web", "launch-42") == "governor-acme-web-launch\\x2d42.scope"
    for rel in ("", "acme", "acme/web", "blue-team/a@b", "x.y/z:1"):
        assert lay.rel_of_unit(lay.unit(rel)) == rel


def test_slice_layout_nested_subtree() -> None:
    lay = SliceLayout("tenants-gov.slice")
    assert lay.path("acme/web") == ("tenants.slice/tenants-gov.slice/tenants-gov-acme.slice/"
                                    "tenants-gov-acme-web.slice")


@given(NAME, NAME)
def test_group_names_never_collide(t: str, g: str) -> None:
    lay = SliceLayout("governor.slice")
    path = lay.path(f"{t}/{g}")
    assert lay.group_of("/" + path) == f"{t}/{g}"
    assert lay.group_of("/" + lay.placement_path(f"{t}/{g}")) == f"{t}/{g}"
    assert lay.group_of("/" + lay.path(t)) == t


@pytest.mark.parametrize("unit", [
    "governor-a-b-c.slice", "governor-.slice", "other-acme.slice", "governor-acme.scope",
    "governor-a\\x2f.slice",  # an escaped '/' is no policy name
    "governor-memory.max.slice",  # nor is a kernel interface prefix
    "governor-a\\xff.slice",  # not UTF-8
])
def test_rel_of_unit_refuses_what_is_not_ours(unit: str) -> None:
    assert SliceLayout("governor.slice").rel_of_unit(unit) is None


def test_group_of_and_placed() -> None:
    lay = SliceLayout("governor.slice")
    web = "/governor.slice/governor-acme.slice/governor-acme-web.slice"
    assert lay.group_of(web + "/governor-acme-web-launch\\x2d7.scope") == "acme/web"
    assert lay.placed(web + "/governor-acme-web-placed.scope", "acme/web")
    assert not lay.placed(web + "/governor-acme-web-placed.scope", "acme/db")
    assert lay.group_of("/system.slice/ssh.service") is None
    assert lay.group_of("/governor.slice/foreign.scope") is None
    assert lay.managed("/governor.slice/foreign.scope") and lay.managed("/governor.slice")
    assert not lay.managed("/governor.slicey")


def test_unit_name_too_long_is_a_clear_error() -> None:
    lay = SliceLayout("governor.slice")
    long = "a" + "+" * 63  # each '+' escaped to four characters
    with pytest.raises(UnitNameError, match="systemd allows 255"):
        lay.path(f"{long}/{long}")


def test_a_name_too_long_for_systemd_never_stops_the_other_groups(tmp_path: Path) -> None:
    lay = SliceLayout("governor.slice")
    long = "a" + "+" * 63
    text = POLICY + f'[tenants."{long}"]\ncpu.weight = 5\n[tenants."{long}".groups."{long}"]\n' \
        "cpu.weight = 7\n"
    for k, v in LEAF_FILES.items():
        (tmp_path / k).write_text(v)
    with CgroupFS(tmp_path, verify=False) as fs:
        plan = make_plan(fs, lay, desired_state(_policy(text)))
    assert lay.path("acme/web") in [a.path for a in plan.actions if a.kind == "create"]
    notes = [a.reason for a in plan.actions if a.kind == "note"]
    assert any("systemd allows 255" in n and long in n for n in notes), notes


def _slice_tree(mount: Path, lay: SliceLayout, groups: list[str]) -> None:
    for k, v in LEAF_FILES.items():
        (mount / k).write_text(v)
    create_child(mount, lay.subtree)
    for rel in groups:
        parent = mount / lay.path(rel).rsplit("/", 1)[0]
        create_child(parent, lay.path(rel).rsplit("/", 1)[1])


def test_listing_skips_scopes_and_foreign_directories(tmp_path: Path) -> None:
    lay = SliceLayout("governor.slice")
    _slice_tree(tmp_path, lay, ["acme", "acme/web", "blue-team", "blue-team/db"])
    create_child(tmp_path / lay.path("acme/web"), lay.scope("acme/web"))
    create_child(tmp_path / lay.path("acme"), "governor-acme-stray.scope")
    create_child(tmp_path / lay.subtree, "random.slice")
    with CgroupFS(tmp_path, verify=False) as fs:
        assert sorted(lay.groups(fs)) == ["acme", "acme/web", "blue-team", "blue-team/db"]
        # the same tree read with the cgroupfs layout takes every directory for a group
        assert "governor-acme.slice" in Layout("governor.slice").groups(fs)


def test_sampler_reads_slices_by_logical_path(tmp_path: Path) -> None:
    from governor.metering.sampler import Sampler
    from tests.unit.cgroupfs_fake import READ_PATHS  # noqa: F401 (both paths below)

    lay = SliceLayout("governor.slice")
    _slice_tree(tmp_path, lay, ["acme", "acme/web"])
    for accelerated in (False, None):
        with CgroupFS(tmp_path, verify=False) as fs:
            s = Sampler(fs, lay, "n1", accelerated=accelerated)
            p1, p2 = s.sample(), s.sample()
            s.close()
        assert sorted(x.path for x in p2.samples) == ["acme", "acme/web"], accelerated
        assert not p1.errors and not p2.errors


# -- limits as properties ---------------------------------------------------------------------
@pytest.fixture
def sysdev(tmp_path: Path) -> Path:
    d = tmp_path / "sys" / "254:0"
    d.mkdir(parents=True)
    (d / "uevent").write_text("MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n")
    return tmp_path / "sys"


@pytest.mark.parametrize(("file", "value", "props"), [
    ("memory.max", "536870912", [("MemoryMax", ("t", 536870912))]),
    ("memory.max", "max", [("MemoryMax", ("t", INFINITY))]),
    ("memory.high", "469762048", [("MemoryHigh", ("t", 469762048))]),
    ("memory.low", "0", [("MemoryLow", ("t", 0))]),
    ("memory.min", "1048576", [("MemoryMin", ("t", 1048576))]),
    ("memory.swap.max", "0", [("MemorySwapMax", ("t", 0))]),
    ("pids.max", "256", [("TasksMax", ("t", 256))]),
    ("pids.max", "max", [("TasksMax", ("t", INFINITY))]),
    ("cpu.weight", "300", [("CPUWeight", ("t", 300))]),
    ("io.weight", "default 50", [("IOWeight", ("t", 50))]),
    ("cpu.max", "50000 100000", [("CPUQuotaPeriodUSec", ("t", 100000)),
                                 ("CPUQuotaPerSecUSec", ("t", 500000))]),
    ("cpu.max", "max 100000", [("CPUQuotaPeriodUSec", ("t", 100000)),
                               ("CPUQuotaPerSecUSec", ("t", INFINITY))]),
    ("io.max", "254:0 wbps=10485760 riops=1000",
     [("IOWriteBandwidthMax", ("a(st)", [("/dev/vda", 10485760)])),
      ("IOReadIOPSMax", ("a(st)", [("/dev/vda", 1000)]))]),
    ("io.max", "254:0 rbps=max wbps=max riops=max wiops=max",
     [(p, ("a(st)", [("/dev/vda", INFINITY)])) for p in (
         "IOReadBandwidthMax", "IOWriteBandwidthMax", "IOReadIOPSMax", "IOWriteIOPSMax")]),
])
def test_unit_properties(file: str, value: str, props: list[object], sysdev: Path,
                         tmp_path: Path) -> None:
    got = unit_properties(file, value, sys_dev=sysdev, dev="/dev")
    assert got == props


@pytest.mark.parametrize(("quota", "period"), [
    (50000, 100000), (150000, 100000), (33333, 100000), (1000, 1000), (7, 3000),
    (250000, 1000000), (123457, 999983)])
def test_cpu_quota_round_trips_through_systemds_formula(quota: int, period: int) -> None:
    from governor.systemd.units import cpu_quota_per_sec

    per_sec = cpu_quota_per_sec(quota, period)
    written = -(-per_sec * period // 1_000_000)  # systemd: usec_t_div_round_up
    assert written == quota


@pytest.mark.parametrize(("file", "value", "why"), [
    ("cpu.max.burst", "1000", "no property"), ("memory.oom.group", "1", "only for services"),
    ("cpu.max", "50000 50000", "needs systemd 242"),
])
def test_unexpressible(file: str, value: str, why: str) -> None:
    with pytest.raises(Unexpressible, match=why):
        unit_properties(file, value, version=241)


def test_block_device_errors_name_the_file(sysdev: Path) -> None:
    with pytest.raises(Unexpressible, match=r"8:0.*uevent.*errno"):
        block_device("8:0", sys_dev=sysdev)
    (sysdev / "254:0" / "uevent").write_text("MAJOR=254\nDEVNAME=../../etc/passwd\n")
    with pytest.raises(Unexpressible, match="no DEVNAME"):
        block_device("254:0", sys_dev=sysdev)


# -- the plan under systemd -----------------------------------------------------------------
POLICY = """
[tenants.acme]
memory.max = "1G"
cpu.weight = 300
[tenants.acme.groups.web]
memory.max = "512M"
cpu.max = "0.5"
"cpu.max.burst" = "10ms"
pids.max = 256
"""


def _policy(text: str = POLICY):  # type: ignore[no-untyped-def]
    return parse_policy([("p.toml", text)], device_resolver=lambda _d: (254, 0))


def test_plan_for_a_fresh_tree_makes_slices_and_notes_what_systemd_cannot(
        tmp_path: Path) -> None:
    lay = SliceLayout("governor.slice")
    for k, v in LEAF_FILES.items():
        (tmp_path / k).write_text(v)
    with CgroupFS(tmp_path, verify=False) as fs:
        plan = make_plan(fs, lay, desired_state(_policy()))
    creates = [a.path for a in plan.actions if a.kind == "create"]
    assert creates == ["governor.slice", lay.path("acme"), lay.path("acme/web")]
    assert not [a for a in plan.actions if a.kind == "enable"]
    assert not [a for a in plan.writes if a.file == "cpu.max.burst"]
    notes = [a for a in plan.actions if a.kind == "note"]
    assert [a.file for a in notes] == ["cpu.max.burst"]
    assert "cpu.max.burst" in notes[0].reason and "systemd" in notes[0].reason


def test_plan_removes_only_empty_slices_and_never_scopes(tmp_path: Path) -> None:
    lay = SliceLayout("governor.slice")
    _slice_tree(tmp_path, lay, ["acme", "acme/web", "acme/old", "gone", "busy"])
    create_child(tmp_path / lay.path("acme/web"), lay.scope("acme/web"))
    (tmp_path / lay.path("busy") / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    with CgroupFS(tmp_path, verify=False) as fs:
        plan = make_plan(fs, lay, desired_state(_policy()))
    removed = {a.path for a in plan.actions if a.kind == "remove"}
    kept = {a.path for a in plan.actions if a.kind == "keep"}
    assert removed == {lay.path("acme/old"), lay.path("gone")}
    assert kept == {lay.path("busy")}


class FakeBus:
    """Records the calls; answers as systemd would for the cases under test."""

    def __init__(self, *, exists: set[str] | None = None, fail: str | None = None) -> None:
        self.calls: list[tuple[str, str, object]] = []
        self.exists = exists or set()
        self.fail = fail

    def version(self) -> int:
        return 252

    def close(self) -> None:
        self.calls.append(("close", "", None))

    def start_transient_unit(self, name: str, properties: list[object], **_: object) -> None:
        from governor.systemd.bus import SystemdError, UnitExists

        self.calls.append(("start", name, dict(properties)))  # type: ignore[arg-type]
        if name == self.fail:
            raise SystemdError(name, "StartTransientUnit", "job failed")
        if name in self.exists:
            raise UnitExists(name, "StartTransientUnit", "exists",
                             name="org.freedesktop.systemd1.UnitExists")

    def set_unit_properties(self, name: str, properties: list[object], **_: object) -> None:
        self.calls.append(("set", name, dict(properties)))  # type: ignore[arg-type]

    def attach_processes(self, unit: str, pids: list[int], subcgroup: str = "") -> None:
        self.calls.append(("attach", unit, list(pids)))

    def stop_unit(self, name: str, **_: object) -> None:
        self.calls.append(("stop", name, None))


def test_driver_carries_out_a_plan_as_unit_calls(tmp_path: Path) -> None:
    lay = SliceLayout("governor.slice")
    for k, v in LEAF_FILES.items():
        (tmp_path / k).write_text(v)
    bus = FakeBus(exists={"governor-acme.slice"})
    with CgroupFS(tmp_path, verify=False) as fs:
        drv = SystemdDriver(lay, bus, fs)  # type: ignore[arg-type]
        plan = make_plan(fs, lay, desired_state(_policy()))
        outcomes = apply_plan(fs, plan, execute=drv.executor(plan))
    assert all(o.ok for o in outcomes), [str(o) for o in outcomes]
    kinds = [(c[0], c[1]) for c in bus.calls]
    # one call per slice: started with every property; an existing one is taken over
    assert kinds == [("start", "governor.slice"), ("start", "governor-acme.slice"),
                     ("set", "governor-acme.slice"), ("start", "governor-acme-web.slice")]
    assert bus.calls[0][2]["MemoryAccounting"] == ("b", True)  # type: ignore[index]
    sets = {(c[1], k): v for c in bus.calls if c[0] in ("set", "start")
            for k, v in c[2].items()}  # type: ignore[attr-defined]
    assert sets[("governor-acme.slice", "MemoryMax")] == ("t", 1 << 30)
    assert sets[("governor-acme.slice", "CPUWeight")] == ("t", 300)
    assert sets[("governor-acme-web.slice", "CPUQuotaPerSecUSec")] == ("t", 500000)
    assert sets[("governor-acme-web.slice", "TasksMax")] == ("t", 256)


def test_driver_refuses_paths_outside_its_slices(tmp_path: Path) -> None:
    from governor.enforce.plan import Action

    lay = SliceLayout("governor.slice")
    with CgroupFS(tmp_path, verify=False) as fs:
        drv = SystemdDriver(lay, FakeBus(), fs)  # type: ignore[arg-type]
        for a in (Action("set", "system.slice/ssh.service", "memory.max", None, "1"),
                  Action("set", "governor.slice/governor-acme.slice/x.scope", "memory.max",
                         None, "1"),
                  Action("enable", "governor.slice", "cgroup.subtree_control", None, "+cpu")):
            with pytest.raises(GovernorError):
                drv.execute(a)


def test_driver_never_stops_a_slice_that_has_processes(tmp_path: Path) -> None:
    from governor.enforce.plan import Action

    lay = SliceLayout("governor.slice")
    _slice_tree(tmp_path, lay, ["old"])
    (tmp_path / lay.path("old") / "cgroup.events").write_text("populated 1\n")
    bus = FakeBus()
    with CgroupFS(tmp_path, verify=False) as fs:
        drv = SystemdDriver(lay, bus, fs)  # type: ignore[arg-type]
        with pytest.raises(GovernorError, match="has processes again"):
            drv.execute(Action("remove", lay.path("old")))
    assert not [c for c in bus.calls if c[0] == "stop"]


def test_start_scope_and_its_errors(tmp_path: Path) -> None:
    lay = SliceLayout("governor.slice")
    with CgroupFS(tmp_path, verify=False) as fs:
        bus = FakeBus()
        SystemdDriver(lay, bus, fs).start_scope("acme/web", os.getpid())  # type: ignore[arg-type]
        name, props = bus.calls[0][1], bus.calls[0][2]
        assert name == "governor-acme-web-placed.scope"
        assert props["Slice"] == ("s", "governor-acme-web.slice")  # type: ignore[index]
        assert props["PIDs"] == ("au", [os.getpid()])  # type: ignore[index]
        assert props["Delegate"] == ("b", True)  # type: ignore[index]
        # an existing scope: the process is attached to it
        bus = FakeBus(exists={"governor-acme-web-placed.scope"})
        SystemdDriver(lay, bus, fs).start_scope("acme/web", 1234)  # type: ignore[arg-type]
        assert bus.calls[-1] == ("attach", "governor-acme-web-placed.scope", [1234])
        # a failure is a CgroupError naming the scope, the pid and systemd's answer
        bus = FakeBus(fail="governor-acme-web-placed.scope")
        with pytest.raises(CgroupError) as e:
            SystemdDriver(lay, bus, fs).start_scope("acme/web", os.getpid())  # type: ignore[arg-type]
        assert "placed.scope" in str(e.value) and "job failed" in str(e.value)
        assert str(os.getpid()) in str(e.value)



@pytest.mark.parametrize(("alive", "err"), [(True, errno.EIO), (False, errno.ESRCH)])
def test_start_scope_error_reads_the_given_proc_root(tmp_path: Path, alive: bool,
                                                    err: int) -> None:
    # gone or not is asked of the driver's procfs (a fake here), and the error names the
    # scope under the driver's own cgroup root, not a hard-coded /proc and /sys/fs/cgroup
    proc = tmp_path / "proc"
    proc.mkdir()
    if alive:
        (proc / "4242").mkdir()
    (tmp_path / "cg").mkdir()
    lay = SliceLayout("governor.slice")
    with CgroupFS(tmp_path / "cg", verify=False) as fs:
        drv = SystemdDriver(lay, FakeBus(fail="governor-acme-web-placed.scope"), fs,  # type: ignore[arg-type]
                            proc_root=str(proc))
        with pytest.raises(CgroupError) as e:
            drv.start_scope("acme/web", 4242)
    assert e.value.errno == err
    assert e.value.path.startswith(str(tmp_path / "cg") + "/governor.slice/")

# -- which driver -----------------------------------------------------------------------------
def test_choose_driver(tmp_path: Path) -> None:
    booted = tmp_path / "run-systemd-system"
    booted.mkdir()
    missing = tmp_path / "none"
    assert choose(Config(), run_dir=str(booted))[0] == "systemd"
    assert "PID 1 is systemd" in choose(Config(), run_dir=str(booted))[1]
    assert choose(Config(), run_dir=str(missing))[0] == "cgroupfs"
    c = Config(cgroup_driver="cgroupfs", source="/etc/governor/config.toml")
    name, why = choose(c, run_dir=str(booted))
    assert name == "cgroupfs" and "/etc/governor/config.toml" in why
    assert isinstance(layout_for(Config(), run_dir=str(booted)), SliceLayout)
    assert type(layout_for(Config(), run_dir=str(missing))) is Layout
    with pytest.raises(ConfigError, match=r"governor\.subtree"):
        layout_for(Config(subtree="tenants"), run_dir=str(booted))


def test_config_cgroup_driver_key(tmp_path: Path) -> None:
    from governor.config import load_config

    p = tmp_path / "c.toml"
    p.write_text('[governor]\ncgroup_driver = "systemd"\n')
    assert load_config(p, environ={}).cgroup_driver == "systemd"
    assert load_config(p, environ={"GOVERNOR_CGROUP_DRIVER": "cgroupfs"}).cgroup_driver == \
        "cgroupfs"
    p.write_text('[governor]\ncgroup_driver = "docker"\n')
    with pytest.raises(ConfigError) as e:
        load_config(p, environ={})
    assert "governor.cgroup_driver" in str(e.value) and "systemd" in str(e.value)


def test_cgroupfs_driver_on_a_systemd_host_refuses_an_undelegated_subtree(
        tmp_path: Path) -> None:
    booted = tmp_path / "run"
    booted.mkdir()
    mount = tmp_path / "cg"
    (mount / "system.slice" / "gov.service" / "tenants").mkdir(parents=True)
    cfg = Config(cgroup_driver="cgroupfs", subtree="governor.slice",
                 self_cgroup="governor-daemon", source="/etc/governor/config.toml")
    with CgroupFS(mount, verify=False) as fs:
        with pytest.raises(ConfigError) as e:
            check_cgroupfs_allowed(cfg, fs, run_dir=str(booted))
        msg = str(e.value)
        assert "governor.subtree" in msg and 'cgroup_driver = "systemd"' in msg
        # not a systemd host: nothing to refuse
        check_cgroupfs_allowed(cfg, fs, run_dir=str(tmp_path / "none"))
        # a subtree inside a delegated unit is allowed
        unit = mount / "system.slice" / "gov.service"
        try:
            os.setxattr(unit, "user.delegate", b"1")
        except OSError as err:
            pytest.skip(f"user xattrs unsupported on {tmp_path}: {err.strerror}")
        cfg.subtree = "system.slice/gov.service/tenants"
        cfg.self_cgroup = "system.slice/gov.service/daemon"
        check_cgroupfs_allowed(cfg, fs, run_dir=str(booted))
