"""Issue #16: a reconcile plans only the groups whose managed files were written (inotify),
and every group every FULL_EVERY-th time; it never reads what nobody touched."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from governor.cgroupfs.files import CgroupFS
from governor.enforce.drift import DriftWatch
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


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Enforcer, Path, list[tuple[str, str]]]]:
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
    pol = tmp_path / "policy.toml"
    pol.write_text(POLICY)
    pol.chmod(0o644)
    fs = CgroupFS(root, verify=False)
    reads: list[tuple[str, str]] = []
    real = fs.read

    def counting(rel: str, file: str) -> str:
        reads.append((rel, file))
        return real(rel, file)

    fs.read = counting  # type: ignore[method-assign]
    watch = DriftWatch(fs, full_every=5)
    e = Enforcer(fs, "governor.slice", str(pol), sys_block=str(tmp_path / "none"),
                 drift_watch=watch)
    assert e.reload("start")
    try:
        yield e, sub, reads
    finally:
        watch.close()
        fs.close()


def test_reconcile_reads_only_what_was_written(
        setup: tuple[Enforcer, Path, list[tuple[str, str]]]) -> None:
    e, sub, reads = setup
    e.reconcile()                     # the first: every group (nothing watched before)
    assert {r for r, _ in reads} >= {"governor.slice/acme/web", "governor.slice/acme/db"}
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
    assert {r for r, _ in reads} - ROOT == {"governor.slice/acme/web"}
    assert e.drift["memory.max"] == 1


def test_every_fifth_reconcile_plans_every_group(
        setup: tuple[Enforcer, Path, list[tuple[str, str]]]) -> None:
    e, _sub, reads = setup
    e.reconcile()
    planned = []
    for _ in range(5):
        reads.clear()
        e.reconcile()
        planned.append(len({r for r, _ in reads} - ROOT))
    assert planned == [0, 0, 0, 3, 0]    # the full sweep reads tenant and both groups
    assert e.reconciled_groups == 3 + 3 + 3   # the start's apply, the first, the sweep


def test_a_removed_group_is_planned_and_made_again(
        setup: tuple[Enforcer, Path, list[tuple[str, str]]]) -> None:
    e, sub, reads = setup
    e.reconcile()
    reads.clear()
    shutil.rmtree(sub / "acme/db")
    out = e.reconcile()
    assert (out[0].action.kind, out[0].action.path) == ("create", "governor.slice/acme/db")
    assert {r for r, _ in reads} - ROOT <= {"governor.slice/acme/db"}
    # the fake tree cannot make a group (the kernel would fill its directory): the writes
    # fail, and a failed write is planned again at the next reconcile, with no event
    assert any(not o.ok for o in out)
    again = e.reconcile()
    assert {o.action.path for o in again} == {"governor.slice/acme/db"}
