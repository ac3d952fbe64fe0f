# Types of the optional C accelerator governor/placement/_fastproc.c: placement's procfs
# reads (governor.placement.procfs's Python readers in C).  Each reads its file whole
# (EFBIG past procfs.PROC_FILE_MAX); OSError carries the errno and the path; ValueError
# names the file whose text is not in the kernel's layout.
from typing import Literal

def proc_stat(path: str, /) -> tuple[str, str, int, int, int, int] | None:
    """(comm, state, ppid, flags, starttime, num_threads) of ``/proc/PID/stat``; None when
    the process is gone (or the file is empty)."""
def proc_cgroup(path: str, /) -> str | Literal[False] | None:
    """The path of the ``0::`` line; None when there is none; False when the process is
    gone."""
def proc_children(path: str, /) -> list[int] | None:
    """The pids of ``/proc/PID/task/TID/children``; None when the thread is gone."""
def proc_ns(path: str, /) -> int | None:
    """The inode N of a namespace link ``pid:[N]``; None when the process is gone."""
def pidfd_exited(fd: int, /) -> bool:
    """Has the process of the pidfd exited (poll POLLIN, no wait)?"""
