"""``governor ps`` rows (governor/placement/ps.py) through psutil on a fake ``/proc`` fed
with real kernel output (tests/unit/procfs_fake.py), pointed at by ``psutil.PROCFS_PATH``."""

from __future__ import annotations

import os
import pwd
import shutil
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest

from governor.cgroupfs.files import CgroupFS
from governor.placement.ps import ps_rows
from governor.policy import parse_policy
from tests.unit.procfs_fake import HOST_NS, add_process, new_proc

POLICY = "[tenants.t.groups.web]\n[tenants.t.groups.db]\n[tenants.u.groups.api]\n"


@pytest.fixture
def proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = new_proc(tmp_path)
    monkeypatch.setattr(psutil, "PROCFS_PATH", str(root))
    return root


def cgroups(tmp_path: Path, procs: dict[str, list[int]]) -> CgroupFS:
    for rel, pids in procs.items():
        d = tmp_path / "cg" / "gov" / rel
        d.mkdir(parents=True)
        (d / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
    return CgroupFS(tmp_path / "cg", verify=False)


def unnamed_uid() -> int:
    uid = 54321
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


def test_rows_in_policy_order_with_user_command_namespace_and_start(
        tmp_path: Path, proc: Path) -> None:
    nobody = unnamed_uid()
    add_process(proc, 100, comm="nginx", cmdline=["nginx", "-g", "daemon off;"],
                starttime=107672)
    add_process(proc, 101, comm="pool_workqueue_release", kthread=True)  # no cmdline
    add_process(proc, 200, comm="postgres", uid=nobody, ns=HOST_NS + 7)
    add_process(proc, 300, comm="api")
    fs = cgroups(tmp_path, {"t/web": [100, 101], "t/db": [200], "u/api": [300]})
    rows = ps_rows(fs, "gov", parse_policy([("p.toml", POLICY)]))
    assert [(r.group, r.pid) for r in rows] == [("t/web", 100), ("t/web", 101),
                                                ("t/db", 200), ("u/api", 300)]
    web, kthread, db, _ = rows
    assert web.command == "nginx -g daemon off;"
    assert web.user == "root"
    assert (web.pidns, web.container) == (HOST_NS, False)
    started = 1718000000 + 107672 / os.sysconf("SC_CLK_TCK")  # btime + field 22 / CLK_TCK
    assert web.since == datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds")
    assert kthread.command == "[pool_workqueue_release]"
    assert db.user == str(nobody)  # no passwd entry: the uid itself
    assert (db.pidns, db.container) == (HOST_NS + 7, True)
    only_u = ps_rows(fs, "gov", parse_policy([("p.toml", POLICY)]), tenant="u")
    assert [r.pid for r in only_u] == [300]


def test_a_process_gone_while_listed_is_skipped(tmp_path: Path, proc: Path) -> None:
    add_process(proc, 100)
    add_process(proc, 101)
    shutil.rmtree(proc / "101")  # listed in cgroup.procs, exited before it was read
    fs = cgroups(tmp_path, {"t/web": [100, 101, 102]})  # 102: never in /proc at all
    assert [r.pid for r in ps_rows(fs, "gov", parse_policy([("p.toml", POLICY)]))] == [100]


def test_an_unreadable_namespace_is_unknown_not_fatal(
        tmp_path: Path, proc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    add_process(proc, 100)
    real = os.readlink

    def readlink(path: str) -> str:  # the kernel's EACCES without ptrace access
        if path.endswith("/100/ns/pid"):
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(os, "readlink", readlink)
    fs = cgroups(tmp_path, {"t/web": [100]})
    [row] = ps_rows(fs, "gov", parse_policy([("p.toml", POLICY)]))
    assert (row.pid, row.pidns, row.container) == (100, None, None)
