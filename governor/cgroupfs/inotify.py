"""inotify(7) for the cgroup tree: ``memory.events`` changes (the OOM watcher) and groups
made, removed or renamed (the sampler's listing); and for the policy files (the daemon's
policy watch)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
#: a directory's entries changed, or the directory itself went
DIR_CHANGES = (IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE_SELF
               | IN_MOVE_SELF | IN_ONLYDIR)
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (+ name)



class Inotify:
    """inotify(7) through ctypes (the stdlib has no binding)."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        self._rm = libc.inotify_rm_watch
        self._rm.argtypes = (ctypes.c_int, ctypes.c_int)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        self.fd: int = fd

    def add(self, path: str, mask: int = IN_MODIFY) -> int:
        wd = int(self._add(self.fd, os.fsencode(path), mask))
        if wd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), path)
        return wd

    def remove(self, wd: int) -> None:
        self._rm(self.fd, wd)  # EINVAL when the kernel already dropped it: fine

    def read(self) -> list[tuple[int, int]]:
        """``(wd, mask)`` of every queued event (empty when none)."""
        return [(wd, mask) for wd, mask, _name in self.read_named()]

    def read_named(self) -> list[tuple[int, int, str]]:
        """``(wd, mask, name)`` of every queued event (name: the entry of a watched
        directory the event is about, "" for the watched object itself)."""
        out: list[tuple[int, int, str]] = []
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            off = 0
            while off + _EVENT.size <= len(buf):
                wd, mask, _cookie, length = _EVENT.unpack_from(buf, off)
                start = off + _EVENT.size
                name = buf[start:start + length].rstrip(b"\0")
                out.append((wd, mask, os.fsdecode(name)))
                off = start + length

    def close(self) -> None:
        os.close(self.fd)
