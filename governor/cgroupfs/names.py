"""Validation of tenant and group names, before any path is built from them.

A name becomes one directory component below the governor's subtree.  Policy files are
hostile input (the daemon runs as root), so a name is refused unless it is a plain,
printable, short component that cannot climb out of the subtree or collide with a kernel
interface file.
"""

from __future__ import annotations

import functools
import re

from governor.errors import InvalidName

#: longest accepted name; well below NAME_MAX (255) so that ``<tenant>/<group>`` and the
#: kernel's own suffixes stay comfortably inside PATH_MAX
MAX_NAME = 64

_ALLOWED = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@:+-]*\Z")
#: prefixes of the kernel's interface files: a child directory called "memory.max" would
#: be refused by the kernel anyway (EEXIST) or shadow a controller's namespace
_RESERVED_PREFIXES = ("cgroup.", "cpu.", "cpuset.", "io.", "memory.", "pids.", "hugetlb.",
                      "rdma.", "misc.", "irq.")


def check_name(name: object, *, what: str = "group") -> str:
    """Return ``name`` if it is a safe single path component, else raise :class:`InvalidName`.

    Rules: a non-empty string of at most 64 characters from ``A-Z a-z 0-9 _ . @ : + -``
    that starts with a letter or digit (so no ``.``/``..``, no hidden names, no leading
    ``-`` that a tool could read as an option), no ``/``, NUL or control character, and not
    a kernel interface prefix such as ``memory.``.
    """
    if not isinstance(name, str):
        raise InvalidName(name, f"a {what} name must be a string, not {type(name).__name__}")
    if not name:
        raise InvalidName(name, f"a {what} name must not be empty")
    if len(name) > MAX_NAME:
        raise InvalidName(name, f"a {what} name is at most {MAX_NAME} characters, "
                                f"this one has {len(name)}")
    if name in (".", ".."):
        raise InvalidName(name, "'.' and '..' would leave the governor's subtree")
    for ch in name:
        if ch == "/":
            raise InvalidName(name, "'/' would make a path, a name is one component")
        if ch == "\0":
            raise InvalidName(name, "NUL bytes are not allowed")
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise InvalidName(name, f"control character {ch!r} is not allowed")
    if name.startswith("."):
        raise InvalidName(name, "names must not start with '.'")
    if not _ALLOWED.match(name):
        raise InvalidName(name, "use letters, digits and _ . @ : + - , starting with a "
                                "letter or digit")
    low = name.lower()
    for p in _RESERVED_PREFIXES:
        if low.startswith(p):
            raise InvalidName(name, f"names starting with {p!r} clash with the kernel's "
                                    "interface files")
    return name


#: a directory systemd makes for a unit (systemd.unit(5)): ``governor-blue\x2dteam.slice``;
#: its escapes (``\xNN``) are the only thing a policy name cannot hold, and it cannot be
#: ``.``/``..`` (it ends in a unit suffix).  UNIT_NAME_MAX is 256 with the NUL.
_UNIT_DIR = re.compile(r"(?:[A-Za-z0-9:_@-]|\\x[0-9a-fA-F]{2})(?:[A-Za-z0-9:_.@-]|"
                       r"\\x[0-9a-fA-F]{2}){0,240}\.(?:slice|scope|service)\Z")


def check_component(name: str) -> str:
    """A directory name the cgroupfs choke point accepts: a policy name
    (:func:`check_name`), or the cgroup of a systemd unit (escapes and all)."""
    try:
        return check_name(name)
    except InvalidName:
        if isinstance(name, str) and _UNIT_DIR.match(name):
            return name
        raise


@functools.lru_cache(maxsize=4096)
def check_relpath(rel: str) -> str:
    """Validate a relative group path ``a/b/c`` (each component through
    :func:`check_component`: a policy name, or a systemd unit's directory).

    Memoized (a refused path raises each time, it is not cached): placement writes the same
    few ``cgroup.procs`` paths once per process it moves."""
    if rel in ("", "."):
        return ""
    for part in rel.split("/"):
        check_component(part)
    return rel
