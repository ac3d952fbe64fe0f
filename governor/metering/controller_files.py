"""The generic controllers' files as the sampler reads them (governor/controllers): which
controllers a group has (:func:`enabled_by_parent`), a file read whole up to a cap
(:func:`read_capped`), and a controller's refusal of a text as a sample error
(:func:`as_stat_error`)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.reader import StatFileError
from governor.controllers.base import Controller, ValueReadError
from governor.errors import CgroupError, GroupGone

#: ``enabled(rel, controllers)``: which of ``controllers`` a group has (enabled_by_parent)
Enabled = Callable[[str, tuple[Controller, ...]], tuple[Controller, ...]]


def enabled_by_parent(fs: CgroupFS) -> Enabled:
    """``enabled(rel, controllers)``: which of ``controllers`` are enabled in the group
    at ``rel`` (relative to the cgroup root), from its parent's ``cgroup.subtree_control``
    (a controller's interface files exist in a group exactly when its parent enables it:
    cgroup-v2.rst "Enabling and Disabling").  Each parent is read once per function made
    here (the sampler makes one a pass: about one read per tenant), so a controller
    enabled nowhere costs no open of an absent file per group (issue #16: at 1,000 groups
    the absent cpuset and hugetlb files were 12% of the daemon's CPU).  A parent that
    cannot be read gives every controller (their files are then tried, as always)."""
    by_parent: dict[str, frozenset[str] | None] = {}

    def enabled(rel: str, controllers: tuple[Controller, ...]) -> tuple[Controller, ...]:
        parent = rel.rpartition("/")[0]
        if parent in by_parent:
            on = by_parent[parent]
        else:
            try:
                on = frozenset(fs.read(parent, "cgroup.subtree_control").split())
            except (CgroupError, OSError):
                on = None
            by_parent[parent] = on
        return controllers if on is None else tuple(c for c in controllers if c.name in on)

    return enabled


#: the most bytes an effective file may hold (``cpuset.cpus.effective`` of 8192 CPUs,
#: every other one: about 24 KiB); a larger one is a sample error, never read truncated
EFFECTIVE_MAX = 64 * 1024


def read_capped(fs: CgroupFS, rel: str, file: str) -> bytes | None:
    """The bytes of ``rel/file`` (None: no such file, its controller not enabled there);
    StatFileError ``too_large`` above :data:`EFFECTIVE_MAX` bytes."""
    try:
        fd = fs.open(rel, file, os.O_RDONLY)
    except FileNotFoundError:
        if not fs.exists(rel):
            raise GroupGone("read", rel, file, errno.ENOENT) from None
        return None
    except OSError as e:
        raise fs._error("read", rel, file, e) from e
    try:
        data = os.pread(fd, EFFECTIVE_MAX + 1, 0)
    except OSError as e:
        raise fs._error("read", rel, file, e) from e
    finally:
        os.close(fd)
    if len(data) > EFFECTIVE_MAX:
        raise StatFileError(rel, file, "too_large", data,
                            f"more than {EFFECTIVE_MAX} bytes")
    return data


def as_stat_error(fs: CgroupFS, rel: str, e: Exception) -> CgroupError:
    """A controller's refusal of a file's text as the sampler counts it."""
    if isinstance(e, CgroupError):
        return e
    if isinstance(e, ValueReadError):
        return StatFileError(rel, e.file, "parse", e.value.encode(), e.why)
    reason = "encoding" if isinstance(e, UnicodeDecodeError) else "parse"
    return StatFileError(rel, "(effective)", reason, b"", str(e))
