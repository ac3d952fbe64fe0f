"""Tenant and group names: the policy's (validated) and the kernel's (escaped).

A policy name becomes one directory component below the governor's subtree.  Policy files
are hostile input (the daemon runs as root), so a policy name is refused
(:func:`check_name`) unless it is a plain, printable, short component that cannot climb out
of the subtree or collide with a kernel interface file.

A name found in the kernel (a directory listed below the subtree, a ``/proc/PID/cgroup``
path) is data, not policy: a runtime's ``docker-<64 hex>.scope``, ``web 2`` or bytes that
are not UTF-8 are all valid directory names (issue #15).  Such a name is never refused:
:func:`escape_name` turns it into the *key* used for samples, metric labels, database rows
and status lines (``web 2`` -> ``web\\x202``, like ``systemd-escape``), and
:func:`unescape_name` turns a key back into the directory's real bytes for every access.
A policy name is its own key (every character it may hold is kept as is).
"""

from __future__ import annotations

import functools
import hashlib
import os
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


#: the longest directory name the kernel allows (NAME_MAX, in bytes)
NAME_MAX = 255

#: characters a key keeps as they are: those of a policy name (so a policy name is its own
#: key); every other byte becomes ``\xNN`` (the backslash too, so keys are unambiguous)
_KEEP = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.@:+-")
_ESCAPES = re.compile(r"\\x([0-9a-fA-F]{2})")


def _encode(name: str) -> bytes:
    """The bytes of a directory name (surrogate escapes back to the bytes they were; any
    other lone surrogate, which no listing makes, as its UTF-8 form, never an error)."""
    try:
        return os.fsencode(name)
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogatepass")


#: the longest key: the store's name columns hold 64 characters (MAX_NAME); a longer
#: escaped name is cut and ends in ``~`` and 8 hex digits of the SHA-256 of its bytes
MAX_KEY = MAX_NAME
_HASHED = "~"  # escaped as \x7e in any other key, so only a cut key holds it
#: cut key -> directory name, for the names seen in this process (bounded: oldest first out)
_LONG: dict[str, str] = {}
_LONG_MAX = 1 << 16


def escape_name(raw: str) -> str:
    """The key of a directory name the kernel reported (``os.listdir``/``os.fsdecode``
    output: bytes that are not UTF-8 are surrogate escapes and come out as the bytes they
    were): ``[A-Za-z0-9_.@:+-]`` kept, every other byte as ``\\xNN``; a key longer than
    64 characters is cut and ends in ``~`` and a hash (``docker-<64 hex>.scope`` ->
    ``docker-<48 hex>~<8 hex>``), remembered so :func:`unescape_name` finds the directory.
    Never raises for a str; a policy name is returned unchanged."""
    key = _escape(raw)
    if _HASHED in key:  # seen again: the most recent (a live name is never the oldest)
        if _LONG.pop(key, None) is None and len(_LONG) >= _LONG_MAX:
            del _LONG[next(iter(_LONG))]
        _LONG[key] = raw
    return key


@functools.lru_cache(maxsize=8192)
def _escape(raw: str) -> str:
    data = _encode(raw)
    if len(data) <= MAX_KEY and all(b in _KEEP for b in data):
        return raw
    key = "".join(chr(b) if b in _KEEP else f"\\x{b:02x}" for b in data)
    if len(key) <= MAX_KEY:
        return key
    cut = key[:MAX_KEY - 9]
    tail = cut.rfind("\\", len(cut) - 3)
    if tail >= 0:  # never half an escape
        cut = cut[:tail]
    return f"{cut}{_HASHED}{hashlib.sha256(data).hexdigest()[:8]}"


@functools.lru_cache(maxsize=8192)
def unescape_name(key: str) -> str:
    """The directory name (as ``os`` functions take it: surrogate escapes for bytes that
    are not UTF-8) of a key made by :func:`escape_name`; :class:`InvalidName` for a key
    that is no single directory name (``/``, NUL, ``.``/``..``, over 255 bytes, a
    backslash that starts no ``\\xNN``, a cut key of a name this process never listed)."""
    if _HASHED in key:
        raw = _LONG.get(key)
        if raw is None:
            raise InvalidName(key, "a shortened key of a directory not listed (yet) by this "
                                   "process; list the groups again")
        return raw
    if "\\" not in key:
        return check_component(key)
    if "\\" in _ESCAPES.sub("", key):
        raise InvalidName(key, "a backslash in a group key starts a \\xNN escape")
    data = _ESCAPES.sub(lambda m: chr(int(m.group(1), 16)), key).encode("latin-1")
    return check_component(os.fsdecode(data))


def check_component(name: str) -> str:
    """A directory name the cgroupfs choke point accepts: any one name the kernel can
    hold (a policy name, a systemd unit's cgroup, a runtime's scope, ``web 2``, bytes that
    are not UTF-8 as surrogate escapes): not empty, no ``/`` or NUL, not ``.``/``..``, at
    most NAME_MAX (255) bytes.  Safety beneath the root is openat2's (RESOLVE_BENEATH);
    what a *policy* may name is :func:`check_name`'s stricter rule."""
    if not isinstance(name, str) or not name:
        raise InvalidName(name, "a directory name must be a non-empty string")
    if name in (".", ".."):
        raise InvalidName(name, "'.' and '..' would leave the governor's subtree")
    if "/" in name or "\0" in name:
        raise InvalidName(name, "a directory name holds no '/' and no NUL")
    if name.isascii():
        size = len(name)
    else:
        try:
            size = len(os.fsencode(name))
        except UnicodeEncodeError:  # a lone surrogate no listing makes
            raise InvalidName(name, "not a name the kernel can hold (a lone surrogate)") \
                from None
    if size > NAME_MAX:
        raise InvalidName(name, f"longer than the kernel's {NAME_MAX} bytes (NAME_MAX)")
    return name


@functools.lru_cache(maxsize=4096)
def check_relpath(rel: str) -> str:
    """Validate a relative group path ``a/b/c`` of directory names (each component through
    :func:`check_component`), as the kernel spells them (not keys: see
    :func:`unescape_name`).

    Memoized (a refused path raises each time, it is not cached): placement writes the same
    few ``cgroup.procs`` paths once per process it moves."""
    if rel in ("", "."):
        return ""
    for part in rel.split("/"):
        check_component(part)
    return rel


def unescape_relpath(key: str) -> str:
    """A key path ``tenant/group`` (keys joined by ``/``) -> the directories' path."""
    if "\\" not in key and _HASHED not in key:
        return check_relpath(key)
    return "/".join(unescape_name(p) for p in key.split("/"))


def display_path(path: str) -> str:
    """``path`` as an error message or a log line shows it: as is when it is printable
    UTF-8, else each component as its key (a name with a newline or bytes that are not
    UTF-8 must not break a terminal, a log line or a print)."""
    if path.isprintable() and path.isascii():
        return path
    try:
        path.encode()
    except UnicodeEncodeError:
        pass
    else:
        if path.isprintable():
            return path
    return "/".join(escape_name(p) if p else p for p in path.split("/"))
