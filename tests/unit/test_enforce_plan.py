"""Planning on a fake cgroupfs: the diff, its order, removals and notes.

The fake holds what a 6.1 kernel shows; whether a write *takes effect* is a kernel matter
(tests/kernel/test_enforce_kernel.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.tree import MANAGED_XATTR, create, managed_by, remove
from governor.enforce import apply_plan, desired_state, make_plan
from governor.enforce.plan import PAGE, same
from governor.errors import GroupBusy
from governor.policy import parse_policy
from tests.unit.cgroupfs_fake import LEAF_FILES, create_child

POLICY = """
[tenants.acme]
memory.max = "1G"
cpu.weight = 300
[tenants.acme.groups.web]
memory.max = "512M"
memory.high = "448M"
memory.low = "128M"
cpu.max = "0.5"
io.max = { "254:0" = { wbps = "10M", riops = 1000 } }
pids.max = 256
"""


def policy(text: str = POLICY):  # type: ignore[no-untyped-def]
    return parse_policy([("p.toml", text)], device_resolver=lambda _d: (254, 0))


@pytest.fixture
def mount(tmp_path: Path) -> Path:
    root = tmp_path / "cg"
    root.mkdir()
    for k, v in LEAF_FILES.items():
        (root / k).write_text(v)
    return root


def mark(d: Path, owner: str = "governor.slice") -> Path:
    """``d`` as governor marks a directory it made (the xattr, its subtree the value)."""
    os.setxattr(d, MANAGED_XATTR, owner.encode())
    return d


def build_tree(mount: Path, *, files: dict[str, dict[str, str]] | None = None) -> None:
    """A tree that matches POLICY exactly (what the kernel shows after an apply)."""
    sub = mark(create_child(mount, "governor.slice"))
    (sub / "cgroup.subtree_control").write_text("cpu io memory pids\n")
    t = mark(create_child(sub, "acme"))
    (t / "cgroup.subtree_control").write_text("cpu io memory pids\n")
    (t / "memory.max").write_text("1073741824\n")
    (t / "cpu.weight").write_text("300\n")
    g = mark(create_child(t, "web"))
    (g / "memory.max").write_text("536870912\n")
    (g / "memory.high").write_text("469762048\n")
    (g / "memory.low").write_text("134217728\n")
    (g / "cpu.max").write_text("50000 100000\n")
    (g / "io.max").write_text("254:0 rbps=max wbps=10485760 riops=1000 wiops=max\n")
    (g / "pids.max").write_text("256\n")
    for rel, fs in (files or {}).items():
        for name, value in fs.items():
            (sub / rel / name).write_text(value)


def plan_for(mount: Path, text: str = POLICY, **kw: object):  # type: ignore[no-untyped-def]
    fs = CgroupFS(mount, verify=False)
    return make_plan(fs, "governor.slice", desired_state(policy(text)),
                     sys_block=str(mount / "no-sys-block"), **kw)  # type: ignore[arg-type]


def test_fresh_tree_creates_parents_first_then_files(mount: Path) -> None:
    p = plan_for(mount)
    kinds = [(a.kind, a.path, a.file) for a in p.actions]
    assert kinds[0] == ("create", "governor.slice", None)
    i_t = kinds.index(("create", "governor.slice/acme", None))
    i_g = kinds.index(("create", "governor.slice/acme/web", None))
    i_set = kinds.index(("set", "governor.slice/acme/web", "memory.max"))
    assert i_t < i_g < i_set
    assert p.summary()["create"] == 3 and p.summary()["set"] == 8


def test_matching_kernel_means_zero_writes(mount: Path) -> None:
    build_tree(mount)
    p = plan_for(mount)
    assert p.writes == [], [str(a) for a in p.actions]
    assert "No changes" in p.summary_line()


def test_drift_is_planned_with_old_and_new(mount: Path) -> None:
    build_tree(mount, files={"acme/web": {"memory.max": "max\n"}})
    p = plan_for(mount)
    assert [(a.file, a.old, a.new) for a in p.writes] == [("memory.max", "max", "536870912")]


def test_sizes_compare_after_page_rounding(mount: Path) -> None:
    # the kernel stores pages: 1000000 bytes reads back rounded down to a page multiple
    text = POLICY.replace('memory.low = "128M"', "memory.low = 1000000")
    build_tree(mount, files={"acme/web": {"memory.low": f"{1000000 // PAGE * PAGE}\n"}})
    assert plan_for(mount, text).writes == []
    assert same("memory.max", "max\n", "max") and not same("memory.max", "4096\n", "max")


def test_lowering_memory_writes_high_before_max(mount: Path) -> None:
    build_tree(mount, files={"acme/web": {"memory.max": "max\n", "memory.high": "max\n"}})
    files = [a.file for a in plan_for(mount).writes]
    assert files.index("memory.high") < files.index("memory.max")


def test_raising_memory_writes_max_before_high(mount: Path) -> None:
    build_tree(mount, files={"acme/web": {"memory.max": "268435456\n",
                                          "memory.high": "201326592\n"}})
    files = [a.file for a in plan_for(mount).writes]
    assert files.index("memory.max") < files.index("memory.high")


def test_cpu_max_before_burst_unless_quota_drops_below_burst(mount: Path) -> None:
    text = POLICY.replace('cpu.max = "0.5"', 'cpu.max = "0.5"\n"cpu.max.burst" = 20000')
    build_tree(mount, files={"acme/web": {"cpu.max": "max 100000\n", "cpu.max.burst": "0\n"}})
    files = [a.file for a in plan_for(mount, text).writes]
    assert files.index("cpu.max") < files.index("cpu.max.burst")
    # current burst 80 ms is above the new 50 ms quota: the burst must go down first
    (mount / "governor.slice/acme/web/cpu.max.burst").write_text("80000\n")
    files = [a.file for a in plan_for(mount, text).writes]
    assert files.index("cpu.max.burst") < files.index("cpu.max")


def test_groups_that_left_the_policy(mount: Path) -> None:
    build_tree(mount)
    sub = mount / "governor.slice"
    mark(create_child(sub / "acme", "old"))                # empty: removed
    busy = mark(create_child(sub, "gone-tenant"))           # has processes: kept
    (busy / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    p = plan_for(mount)
    assert [(a.kind, a.path) for a in p.actions if a.kind in ("remove", "keep")] == [
        ("remove", "governor.slice/acme/old"), ("keep", "governor.slice/gone-tenant")]
    assert "until it is empty" in next(a.reason for a in p.actions if a.kind == "keep")


def test_key_removed_from_policy_returns_to_kernel_default(mount: Path) -> None:
    build_tree(mount)
    prev = desired_state(policy())
    text = POLICY.replace('pids.max = 256\n', "").replace(
        'io.max = { "254:0" = { wbps = "10M", riops = 1000 } }\n', "")
    p = plan_for(mount, text, previous=prev)
    got = {(a.file, a.new) for a in p.writes}
    assert got == {("pids.max", "max"), ("io.max", "254:0 rbps=max wbps=max riops=max wiops=max")}


def test_io_weight_note_without_iocost_or_bfq(mount: Path, tmp_path: Path) -> None:
    sb = tmp_path / "sys_block"
    (sb / "vda" / "queue").mkdir(parents=True)
    (sb / "vda" / "dev").write_text("254:0\n")
    (sb / "vda" / "queue" / "scheduler").write_text("[mq-deadline] none\n")
    (sb / "loop0" / "queue").mkdir(parents=True)
    (sb / "loop0" / "dev").write_text("7:0\n")
    (sb / "loop0" / "queue" / "scheduler").write_text("[none]\n")
    (mount / "io.cost.qos").write_text("")
    text = POLICY + "io.weight = 200\n"
    fs = CgroupFS(mount, verify=False)
    p = make_plan(fs, "governor.slice", desired_state(policy(text)), sys_block=sb)
    notes = [a.reason for a in p.actions if a.kind == "note"]
    assert len(notes) == 1 and "254:0 (vda)" in notes[0] and "iocost_devices" in notes[0]
    # asked to enable iocost on it: a write to the root's io.cost.qos instead of a note
    p2 = make_plan(fs, "governor.slice", desired_state(policy(text)), sys_block=sb,
                   iocost_devices=("254:0",))
    assert [(a.path, a.file, a.new) for a in p2.actions if a.file == "io.cost.qos"] == [
        ("", "io.cost.qos", "254:0 enable=1")]
    assert not [a for a in p2.actions if a.kind == "note"]
    (sb / "vda" / "queue" / "scheduler").write_text("mq-deadline [bfq] none\n")
    p3 = make_plan(fs, "governor.slice", desired_state(policy(text)), sys_block=sb)
    assert not [a for a in p3.actions if a.kind == "note"]


def test_apply_on_fake_reports_each_write(mount: Path) -> None:
    build_tree(mount, files={"acme/web": {"memory.max": "max\n"}})
    fs = CgroupFS(mount, verify=False)
    plan = make_plan(fs, "governor.slice", desired_state(policy()),
                     sys_block=str(mount / "x"))
    outcomes = apply_plan(fs, plan)
    assert [o.ok for o in outcomes] == [True]
    assert (mount / "governor.slice/acme/web/memory.max").read_text() == "536870912"
    assert make_plan(fs, "governor.slice", desired_state(policy()),
                     sys_block=str(mount / "x")).writes == []


# -- issue #15 item 3: only what governor made is removed ---------------------------------
def _delegate(d: Path) -> Path:
    os.setxattr(d, "trusted.delegate", b"1")
    return d


def _runtime_scope_below_group(sub: Path) -> str:
    create_child(sub / "acme/web", "docker-" + "a" * 64 + ".scope")  # a runtime made it
    return ""


def _unmarked_tenant(sub: Path) -> str:
    create_child(sub, "by-hand")
    return "governor.slice/by-hand"


def _unmarked_group(sub: Path) -> str:
    create_child(sub / "acme", "by-hand")
    return "governor.slice/acme/by-hand"


def _second_instance(sub: Path) -> str:
    second = mark(create_child(sub, "second.slice"), "governor.slice/second.slice")
    mark(create_child(second, "t1"), "governor.slice/second.slice")
    return "governor.slice/second.slice"


def _marked_group_with_a_runtime_scope(sub: Path) -> str:
    old = mark(create_child(sub / "acme", "old"))
    create_child(old, "libpod-1.scope")
    return "governor.slice/acme/old"


def _delegated_dropped_group(sub: Path) -> str:
    _delegate(mark(create_child(sub / "acme", "old")))
    return "governor.slice/acme/old"


def _marked_group_below_a_delegated_tenant(sub: Path) -> str:
    _delegate(sub / "acme")
    mark(create_child(sub / "acme", "old"))
    return ""


@pytest.mark.parametrize(("make", "note_for"), [
    pytest.param(_runtime_scope_below_group, "", id="runtime-scope-below-a-group"),
    pytest.param(_unmarked_tenant, "not created by governor", id="unmarked-tenant"),
    pytest.param(_unmarked_group, "not created by governor", id="unmarked-group"),
    pytest.param(_second_instance, "not created by governor", id="second-instance-subtree"),
    pytest.param(_marked_group_with_a_runtime_scope, "libpod-1.scope was not created",
                 id="marked-group-holding-a-runtime-scope"),
    pytest.param(_delegated_dropped_group, "is delegated", id="delegated-group"),
    pytest.param(_marked_group_below_a_delegated_tenant, "",
                 id="marked-group-below-a-delegated-tenant"),
])
def test_plan_removes_only_what_governor_made(mount: Path, make, note_for: str) -> None:  # type: ignore[no-untyped-def]
    """Nothing unmarked, delegated or another instance's is removed; a note says why."""
    build_tree(mount)
    path = make(mount / "governor.slice")
    p = plan_for(mount)
    assert [a for a in p.actions if a.kind in ("remove", "keep")] == []
    notes = [a for a in p.actions if a.kind == "note"]
    if path:
        assert [a.path for a in notes] == [path]
        assert "not in the policy, left as it is" in notes[0].reason
        assert note_for in notes[0].reason
    else:
        assert notes == []
    # and apply leaves it all in place
    apply_plan(CgroupFS(mount, verify=False), p)
    if path:
        assert (mount / path).is_dir()


def test_create_marks_what_it_makes_and_a_dropped_group_is_removed(mount: Path) -> None:
    """(The fake's directories hold plain files, so neither enabling controllers nor
    rmdir works on it: tests/kernel/test_hostile_kernel.py applies on a kernel.)"""
    fs = CgroupFS(mount, verify=False)
    assert create(fs, "governor.slice/acme/web", (), owner="governor.slice") == [
        "governor.slice", "governor.slice/acme", "governor.slice/acme/web"]
    for rel in ("governor.slice", "governor.slice/acme", "governor.slice/acme/web"):
        assert managed_by(fs, rel) == "governor.slice", rel
    assert create(fs, "governor.slice/acme/api", ()) == ["governor.slice/acme/api"]
    assert managed_by(fs, "governor.slice/acme/api") is None  # no owner: no mark
    shutil.rmtree(mount / "governor.slice")
    build_tree(mount)
    p = plan_for(mount, POLICY.replace("[tenants.acme.groups.web]", "[tenants.acme.groups.api]"))
    assert [(a.kind, a.path) for a in p.actions if a.kind == "remove"] == [
        ("remove", "governor.slice/acme/web")]


def test_unmarked_directories_the_policy_names_are_adopted(mount: Path) -> None:
    """Made by a governor before marks: adopted (marked) while named, so they can be
    removed once the policy drops them; unnamed unmarked ones are never removed."""
    build_tree(mount)
    for d in ("governor.slice/acme", "governor.slice/acme/web"):
        os.removexattr(mount / d, MANAGED_XATTR)
    p = plan_for(mount)
    assert [(a.kind, a.path) for a in p.writes] == [
        ("mark", "governor.slice/acme"), ("mark", "governor.slice/acme/web")]
    assert "adopted" in p.writes[0].reason and "to mark as governor's" in p.summary_line()
    fs = CgroupFS(mount, verify=False)
    assert all(o.ok for o in apply_plan(fs, p))
    assert managed_by(fs, "governor.slice/acme/web") == "governor.slice"
    assert plan_for(mount).writes == []


def test_a_group_another_instance_marked_is_not_adopted(mount: Path) -> None:
    build_tree(mount)
    mark(mount / "governor.slice/acme/web", "other.slice")
    p = plan_for(mount)
    assert [a.kind for a in p.writes if a.path == "governor.slice/acme/web"] == []
    assert any("made by the governor of other.slice" in a.reason for a in p.actions
               if a.kind == "note")


def test_remove_refuses_what_appeared_below_since_the_plan(mount: Path) -> None:
    """The check is made again at the rmdir: a runtime's scope made between plan and
    apply is never removed with its (marked) parent."""
    build_tree(mount)
    old = mark(create_child(mount / "governor.slice/acme", "old"))
    fs = CgroupFS(mount, verify=False)
    p = plan_for(mount)
    assert [a.path for a in p.writes if a.kind == "remove"] == ["governor.slice/acme/old"]
    create_child(old, "docker-1.scope")
    (outcome,) = apply_plan(fs, p)
    assert not outcome.ok and "docker-1.scope was not created by governor" in str(outcome.error)
    assert (old / "docker-1.scope").is_dir()
    with pytest.raises(GroupBusy, match="only the directories it made"):
        remove(fs, "governor.slice/acme/old", owner="governor.slice")
