"""A fake ``/proc`` for placement tests: a temp dir whose files are real kernel output
(read from a Linux 6.1 host) with the fields a test cares about rewritten.

Like the cgroupfs fake it never pretends to move anything on its own: a test that wants a
move to "happen" rewrites the process's ``cgroup`` file (see :func:`follow_moves`).
"""

from __future__ import annotations

import os
from pathlib import Path

HOST_NS = 4026531836
# /proc/PID/stat of `cat` on Linux 6.1 (flags 4194304 = PF_RANDOMIZE, starttime 107672)
REAL_STAT = ("10801 (cat) R 10796 10796 8791 0 -1 4194304 99 0 0 0 0 0 0 0 20 0 1 0 107672 "
             "3133440 394 18446744073709551615 94119777804288 94119777824169 140725657101504 "
             "0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 94119777840176 94119777841792 94120565010432 "
             "140725657103065 140725657103085 140725657103085 140725657104363 0\n")
# a kernel thread (flags 2129984 has PF_KTHREAD 0x200000), child of kthreadd
REAL_KTHREAD_STAT = ("3 (pool_workqueue_release) S 2 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 "
                     "25 0 0 18446744073709551615 0 0 0 0 0 0 0 2147483647 0 1 0 0 17 0 0 0 0 0 "
                     "0 0 0 0 0 0 0 0 0\n")
REAL_STATUS = ("Name:\tcat\nUmask:\t0022\nState:\tR (running)\nTgid:\t10826\nNgid:\t0\n"
               "Pid:\t10826\nPPid:\t10824\nTracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n"
               "FDSize:\t256\nGroups:\t \nNStgid:\t10826\nNSpid:\t10826\nNSpgid:\t10824\n"
               "NSsid:\t8791\n")


def add_process(root: Path, pid: int, *, comm: str = "cat", ppid: int = 1,
                uid: int = 0, euid: int | None = None, gid: int = 0,
                exe: str | None = "/usr/bin/cat", cmdline: list[str] | None = None,
                cgroup: str = "/", ns: int = HOST_NS, nspid: tuple[int, ...] | None = None,
                starttime: int = 107672, kthread: bool = False,
                children: list[int] | None = None) -> Path:
    """Write ``root/PID`` from the real templates with these values."""
    d = root / str(pid)
    (d / "ns").mkdir(parents=True, exist_ok=True)
    (d / "task" / str(pid)).mkdir(parents=True, exist_ok=True)
    if kthread:
        rest = REAL_KTHREAD_STAT.split(") ", 1)[1].split()
        exe = None
    else:
        rest = REAL_STAT.split(") ", 1)[1].split()
    rest[1] = str(ppid)
    rest[19] = str(starttime)
    (d / "stat").write_text(f"{pid} ({comm}) {' '.join(rest)}\n")
    e = uid if euid is None else euid
    status = REAL_STATUS.replace("Name:\tcat", f"Name:\t{comm}")
    status = status.replace("Uid:\t0\t0\t0\t0", f"Uid:\t{uid}\t{e}\t{e}\t{e}")
    status = status.replace("Gid:\t0\t0\t0\t0", f"Gid:\t{gid}\t{gid}\t{gid}\t{gid}")
    status = status.replace("NSpid:\t10826",
                            "NSpid:\t" + "\t".join(str(x) for x in (nspid or (pid,))))
    (d / "status").write_text(status)
    (d / "comm").write_text(comm + "\n")
    args = cmdline if cmdline is not None else ([] if kthread else [comm])
    (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in args))
    (d / "cgroup").write_text(f"0::{cgroup}\n")
    for link, target in (("exe", exe), ("ns/pid", f"pid:[{ns}]")):
        p = d / link
        if p.is_symlink():
            p.unlink()
        if target is not None:
            os.symlink(target, p)
    (d / "task" / str(pid) / "children").write_text(
        " ".join(str(c) for c in children or []) + (" " if children else ""))
    return d


def new_proc(tmp_path: Path) -> Path:
    """An empty fake /proc with pid 1 (systemd, host namespace) and /proc/stat."""
    root = tmp_path / "proc"
    root.mkdir()
    (root / "stat").write_text("cpu  1 2 3 4\nbtime 1718000000\nprocesses 100\n")
    add_process(root, 1, comm="systemd", ppid=0, exe="/usr/lib/systemd/systemd",
                cgroup="/init.scope", starttime=1)
    return root


def set_cgroup(root: Path, pid: int, path: str) -> None:
    (root / str(pid) / "cgroup").write_text(f"0::{path}\n")


def cgroup_of(root: Path, pid: int) -> str:
    return (root / str(pid) / "cgroup").read_text().strip()[3:]
