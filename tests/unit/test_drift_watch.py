"""Issue #16: a reconcile plans only the groups whose managed files were written (inotify),
and a FULL_EVERY-th of every group in turn (a rolling sweep: each group once every
FULL_EVERY reconciles, never all of them at once); it reads nothing else."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.tree import MANAGED_XATTR
from governor.enforce.drift import FULL_EVERY, DriftWatch
from governor.enforce.keeper import Enforcer
from tests.unit.cgroupfs_fake import create_child

#: read by every plan that plans anything: the subtree's own state (two reads)
ROOT = {"", "governor.slice"}

POLICY = """
[tenants.acme]
cpu.weight = 300
[tenants.acme.groups.web]
memory.max = "1G"
[tenants.acme.groups.db]
pids.max = 50
"""


def planned(reads: list[tuple[str, str]]) -> set[str]:
    return {r for r, _ in reads} - ROOT


def enforcer(tmp_path: Path, root: Path, policy: str, *, full_every: int = FULL_EVERY
             ) -> tuple[Enforcer, CgroupFS, DriftWatch, list[tuple[str, str]]]:
    """An Enforcer over the fake tree at ``root`` with ``policy`` and a drift watch, and
    the list every read of its cgroupfs is appended to (group, file)."""
    pol = tmp_path / "policy.toml"
    pol.write_text(policy)
    pol.chmod(0o644)
    fs = CgroupFS(root, verify=False)
    reads: list[tuple[str, str]] = []
    real = fs.read

    def counting(rel: str, file: str) -> str:
        reads.append((rel, file))
        return real(rel, file)

    fs.read = counting  # type: ignore[method-assign]
    watch = DriftWatch(fs, full_every=full_every)
    e = Enforcer(fs, "governor.slice", str(pol), sys_block=str(tmp_path / "none"),
                 drift_watch=watch)
    return e, fs, watch, reads


@pytest.fixture(params=[50])
def setup(tmp_path: Path, request: pytest.FixtureRequest
          ) -> Iterator[tuple[Enforcer, Path, list[tuple[str, str]]]]:
    root = tmp_path / "cg"
    root.mkdir()
    sub = create_child(root, "governor.slice")
    acme = create_child(sub, "acme")
    create_child(acme, "web")
    create_child(acme, "db")
    for d in (sub, acme):   # what the kernel shows once the controllers are enabled
        (d / "cgroup.subtree_control").write_text("cpu io memory pids\n")
    # the policy's values already there (the fake's files are not truncated on write)
    (acme / "cpu.weight").write_text("300\n")
    (acme / "web/memory.max").write_text("1073741824\n")
    (acme / "db/pids.max").write_text("50\n")
    e, fs, watch, reads = enforcer(tmp_path, root, POLICY, full_every=request.param)
    assert e.reload("start")
    try:
        yield e, sub, reads
    finally:
        watch.close()
        fs.close()


def test_reconcile_reads_only_what_was_written(
        setup: tuple[Enforcer, Path, list[tuple[str, str]]]) -> None:
    e, sub, reads = setup
    # the start planned every group: the reconciles after it do not do it again; the
    # sweep's first turns (slots 1 and 2 of 50) hold one group each
    reads.clear()
    e.reconcile()
    e.reconcile()
    assert len(planned(reads)) == 2
    reads.clear()
    assert e.reconcile() == [] and reads == []        # nothing written: nothing read
    # files the kernel notifies on its own, or the policy does not manage: still nothing
    (sub / "acme/web/memory.events").write_text("oom 1\n")
    (sub / "acme/db/cpu.weight").write_text("5\n")
    assert e.reconcile() == [] and reads == []
    # a managed file written behind governor's back: that group alone, restored
    (sub / "acme/web/memory.max").write_text("max\n")
    out = e.reconcile()
    assert [(o.action.path, o.action.file, o.action.new) for o in out] == [
        ("governor.slice/acme/web", "memory.max", "1073741824")]
    assert (sub / "acme/web/memory.max").read_text().strip() == "1073741824"
    assert planned(reads) == {"governor.slice/acme/web"}
    assert e.drift["memory.max"] == 1


@pytest.mark.parametrize("setup", [5], indirect=True)
def test_the_rolling_sweep_plans_each_group_once_every_fifth_reconcile(
        setup: tuple[Enforcer, Path, list[tuple[str, str]]]) -> None:
    e, sub, reads = setup
    everything = {"governor.slice/acme", "governor.slice/acme/web", "governor.slice/acme/db"}
    # a group governor made that left the policy: removed by the round's first reconcile
    os.setxattr(sub / "acme", MANAGED_XATTR, b"governor.slice")
    stray = create_child(sub / "acme", "old")
    os.setxattr(stray, MANAGED_XATTR, b"governor.slice")
    rounds = []
    for _ in range(3):
        turns = []
        for _ in range(5):
            reads.clear()
            out = e.reconcile()
            turns.append((planned(reads) & everything, [o.action.kind for o in out
                                           if o.action.kind == "remove"]))
        rounds.append(turns)
    for turns in rounds:
        # three groups over five slots: one each in three reconciles, none in two
        assert sorted(len(g) for g, _ in turns) == [0, 0, 1, 1, 1]
        assert set().union(*(g for g, _ in turns)) == everything
    # each round's first reconcile (from the fifth after the start's whole plan) looks
    # for strays and removes this one; the others do not look.  (The fake tree cannot
    # rmdir a directory of regular files: the removal fails and the next round tries it
    # again, as it would a group that was busy.)
    for turns in rounds:
        assert [(i, r) for i, (_, r) in enumerate(turns) if r] == [(4, ["remove"])]
    assert e.reconciled_groups == 3 + 3 * 3   # the start's apply, then each group 3 times


@pytest.mark.parametrize("setup", [50], indirect=True)
def test_a_removed_group_is_planned_and_made_again(
        setup: tuple[Enforcer, Path, list[tuple[str, str]]]) -> None:
    e, sub, reads = setup
    for _ in range(3):   # past the turns of the slots that hold a group
        e.reconcile()
    reads.clear()
    shutil.rmtree(sub / "acme/db")
    out = e.reconcile()
    assert (out[0].action.kind, out[0].action.path) == ("create", "governor.slice/acme/db")
    assert planned(reads) <= {"governor.slice/acme/db"}
    # the fake tree cannot make a group (the kernel would fill its directory): the writes
    # fail, and a failed write is planned again at the next reconcile, with no event
    assert any(not o.ok for o in out)
    again = e.reconcile()
    assert {o.action.path for o in again} == {"governor.slice/acme/db"}


def test_at_scale_a_reconcile_reads_a_full_every_th_of_the_groups(tmp_path: Path) -> None:
    """1,000 groups: each reconcile plans a FULL_EVERY-th of them (5 with FULL_EVERY 240;
    never all 1,000, as the whole sweep did), and FULL_EVERY reconciles plan each exactly
    once."""
    root = tmp_path / "cg"
    root.mkdir()
    sub = create_child(root, "governor.slice")
    (sub / "cgroup.subtree_control").write_text("cpu io memory pids\n")
    text = []
    for t in range(10):
        td = create_child(sub, f"t{t}")
        (td / "cgroup.subtree_control").write_text("cpu io memory pids\n")
        text.append(f"[tenants.t{t}]")
        for g in range(99):
            (create_child(td, f"g{g:02d}") / "cpu.weight").write_text(f"{g + 1}\n")
            text.append(f"[tenants.t{t}.groups.g{g:02d}]\ncpu.weight = {g + 1}")
    e, fs, watch, reads = enforcer(tmp_path, root, "\n".join(text) + "\n")
    try:
        assert e.reload("start")
        seen: list[str] = []
        for _ in range(FULL_EVERY):
            reads.clear()
            assert e.reconcile() == []
            now = planned(reads) - {f"governor.slice/t{t}" for t in range(10)}
            assert len(now) <= -(-1000 // FULL_EVERY)
            seen.extend(now)
        assert len(seen) == len(set(seen)) == 990
        # a write behind governor's back is still found at once, beside the turn's groups
        (sub / "t3/g07/cpu.weight").write_text("1000\n")
        out = e.reconcile()
        assert [(o.action.path, o.action.new) for o in out] == [
            ("governor.slice/t3/g07", "8")]
    finally:
        watch.close()
        fs.close()


def test_a_group_made_again_is_watched_again(
        setup: tuple[Enforcer, Path, list[tuple[str, str]]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The reconcile that plans a group whose watch ended (the directory went and came
    back) watches it again, though it watches only the groups it planned; the policy's
    desired state is not rebuilt by a reconcile."""
    import governor.enforce.keeper as keeper

    e, sub, reads = setup
    for _ in range(3):   # past the turns of the slots that hold a group
        e.reconcile()
    made: list[object] = []
    monkeypatch.setattr(keeper, "desired_state", made.append)
    shutil.rmtree(sub / "acme/web")
    web = create_child(sub / "acme", "web")     # as a runtime would make it again
    (web / "memory.max").write_text("1073741824\n")
    reads.clear()
    # planned (its watch ended): its values are right, it is adopted as governor's
    assert [o.action.kind for o in e.reconcile()] == ["mark"]
    assert planned(reads) == {"governor.slice/acme/web"}
    (web / "memory.max").write_text("max\n")    # behind governor's back: seen at once
    reads.clear()
    out = e.reconcile()
    assert [(o.action.path, o.action.file) for o in out] == [
        ("governor.slice/acme/web", "memory.max")]
    assert made == []
