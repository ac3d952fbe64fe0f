# Types of the optional C accelerator governor/cgroupfs/_fastread.c: the sampling pass's
# stat-file reads and parsing (StatReader's hot path) and CgroupFS.children's listing.
from collections.abc import Callable
from typing import Any

def configure_reader(*, stats_type: type, stats_fields: tuple[str, ...],
                     files: tuple[tuple[int, str, Callable[[bytes], Any]], ...],
                     psi_type: type, psiline_type: type) -> None:
    """GroupStats and its field names, per fast file (kind 0 flat keyed, 1 integer, 2
    io.stat, 3 pressure; the GroupStats field or pressure key; its Python parser, which
    takes any text not in the kernel's exact layout), Psi and PsiLine."""
def read_fast(fds: tuple[int, ...], cache: list[Any], cgroup_id: int, /) -> Any:
    """The GroupStats of one group's fast files (fds in FAST_FILES order, -1: absent);
    cache: one entry per file, None at first, keeping the last text read and its value.
    OSError (errno; EFBIG past reader.MAX_FILE) or the parser's ValueError: the caller
    reads the group again file by file and names the file."""
def subdirs(dirfd: int, /) -> list[str]:
    """The sorted names of the sub-directories of the directory open at ``dirfd``."""
