"""Ownership marks on the cgroup tree: which directories governor made, and which were
delegated to someone else (issue #15).

Every directory governor makes carries its instance's subtree in an extended attribute
(:func:`mark_managed`); a directory systemd delegated carries ``trusted.delegate``.  The
planner and :func:`governor.cgroupfs.tree.remove` read both (:func:`not_ours`) before
removing anything: what a runtime, another instance or an operator made is never removed.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.managed import DELEGATE_XATTRS
from governor.cgroupfs.names import display_path
from governor.errors import CgroupError

#: the extended attribute on every directory governor makes (issue #15), its value the
#: subtree of the instance that made it: a plan removes a directory only when it carries
#: its own subtree here (never a runtime's scope, another instance's subtree, or what an
#: operator made), as oomd (``trusted.oomd_*``) and systemd (``trusted.delegate``) mark
#: cgroups.  ``trusted.*`` needs CAP_SYS_ADMIN; a governor without it (a delegated,
#: unprivileged subtree) writes ``user.*`` (cgroup2 takes both since Linux 5.7).
MANAGED_XATTR = "trusted.governor.managed"
MANAGED_XATTR_USER = "user.governor.managed"


def mark_managed(fs: CgroupFS, rel: str, owner: str) -> None:
    """Mark ``rel`` as made by the governor of subtree ``owner`` (:data:`MANAGED_XATTR`);
    CgroupError when neither xattr can be set."""
    try:
        fd = fs.open(rel, None, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise fs._error("mark", rel, None, e, owner) from e
    try:
        try:
            os.setxattr(fd, MANAGED_XATTR, owner.encode())
        except PermissionError:  # not CAP_SYS_ADMIN: the user namespace of xattrs
            os.setxattr(fd, MANAGED_XATTR_USER, owner.encode())
    except OSError as e:
        raise CgroupError("mark", str(fs.path(rel)), None, e.errno or 0, value=owner,
                          hint=f"cannot set the {MANAGED_XATTR} (or {MANAGED_XATTR_USER}) "
                               "extended attribute: a kernel before 5.7, or no permission; "
                               "governor will never remove this directory") from e
    finally:
        os.close(fd)


def _xattr(fs: CgroupFS, rel: str, names: Iterable[str]) -> bytes | None:
    """The value of the first of ``names`` that ``rel`` carries (None: none; a directory
    that cannot be opened carries none)."""
    try:
        fd = fs.open(rel, None, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        for name in names:
            try:
                return os.getxattr(fd, name)
            except OSError as e:
                if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EPERM, errno.EACCES):
                    continue
                raise fs._error("read", rel, None, e) from e
        return None
    finally:
        os.close(fd)


def managed_by(fs: CgroupFS, rel: str) -> str | None:
    """The subtree whose governor made ``rel`` (its :data:`MANAGED_XATTR`), or None."""
    value = _xattr(fs, rel, (MANAGED_XATTR, MANAGED_XATTR_USER))
    return None if value is None else value.decode("utf-8", "replace")


def delegated_here(fs: CgroupFS, rel: str) -> bool:
    """Whether ``rel`` itself was delegated (``trusted.delegate``/``user.delegate`` is 1,
    as systemd marks a unit with Delegate=yes): what is below it is not governor's."""
    value = _xattr(fs, rel, DELEGATE_XATTRS)
    return value is not None and value.strip() in (b"1", b"yes", b"true")


def not_ours(fs: CgroupFS, rel: str, owner: str) -> str | None:
    """Why ``rel`` or a directory below it is not governor's to remove (None: all of
    them carry ``owner``'s mark and none was delegated)."""
    if managed_by(fs, rel) != owner:
        return (f"/{display_path(rel)} was not created by governor (no {MANAGED_XATTR} "
                f"= {owner})")
    if delegated_here(fs, rel):
        return (f"/{display_path(rel)} is delegated (trusted.delegate): what is below it "
                "is not governor's")
    for child in fs.children(rel):
        why = not_ours(fs, f"{rel}/{child}", owner)
        if why is not None:
            return why
    return None

