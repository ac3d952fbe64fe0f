"""The store's file primitives: the lock, atomic JSON files, syncing a tree before it is
renamed into place.  Errors are :class:`StoreError` naming the path and the errno."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import secrets
import stat
from collections.abc import Iterator
from typing import Any

from governor.image.errors import StoreError, describe_os_error

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def ensure_dir(path: str) -> None:
    """``path`` (and missing parents) as a directory of ours, mode 0700; a symlink or a
    directory someone else owns is refused (the daemon writes here as root)."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as e:
        raise StoreError(path, f"cannot be created: {describe_os_error(e)}", err=e.errno
                         ) from e
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(path, "not a directory (a symlink is refused too): remove it or "
                         "choose another state_dir")
    if st.st_uid not in (0, os.geteuid()):
        raise StoreError(path, f"owned by uid {st.st_uid}, not root or uid {os.geteuid()}: "
                         f"chown root {path}")


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """An exclusive ``flock`` on the file ``path`` (created), held for the block: two
    imports (or an import and an ``rm``) never change the store at once."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise StoreError(path, f"cannot open the lock file: {describe_os_error(e)}",
                         err=e.errno) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str, data: Any) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file beside it, fsync, rename,
    fsync of the directory.  Readers see the old file or the new one, never a part."""
    where = os.path.dirname(path)
    tmp = os.path.join(where, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    body = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(where)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StoreError(path, f"cannot be written: {describe_os_error(e)}", err=e.errno
                         ) from e


def read_json(path: str) -> Any:
    """The JSON document at ``path``, or None when there is none."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StoreError(path, f"cannot be read: {describe_os_error(e)}", err=e.errno) from e
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(path, f"not valid JSON ({e}): it is written atomically, so it was "
                         "changed by hand; restore it or remove the image store") from e


def syncfs(path: str) -> None:
    """``syncfs(2)`` of the filesystem holding ``path``: a layer is on disk before the
    rename that makes it visible (one call instead of an fsync per file)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def remove_tree(path: str, *, trash: str) -> None:
    """Remove the directory ``path``: first renamed into ``trash`` (same filesystem), so a
    crash midway never leaves a half tree under its real name."""
    gone = os.path.join(trash, f"rm-{secrets.token_hex(6)}")
    try:
        os.rename(path, gone)
    except FileNotFoundError:
        return
    except OSError as e:
        raise StoreError(path, f"cannot be removed: {describe_os_error(e)}", err=e.errno
                         ) from e
    with contextlib.suppress(OSError):  # what is left in trash goes at the next clean-up
        remove_all(gone)


def remove_all(name: str, *, dir_fd: int | None = None) -> None:
    """``rm -rf name`` (relative to ``dir_fd``), never through a symlink, and without
    recursion: ``shutil.rmtree`` recurses once per directory level, so a layer 1,000
    directories deep (one tar member of 2 KiB names it) raised RecursionError, and the
    half-unpacked layer stayed in ``images/tmp/``, failing every later import's clean-up.

    One descriptor is held at a time: the way back up is ``..``, checked to be the
    directory the way down came from; each level keeps the names of its subdirectories
    still to remove (its files are unlinked as it is first listed)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    try:
        levels = [(_identity(fd), _unlink_files(fd))]
        while True:
            pending = levels[-1][1]
            if pending:
                down = os.open(pending[-1], _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = down
                levels.append((_identity(fd), _unlink_files(fd)))
                continue
            levels.pop()
            if not levels:
                break
            up = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = up
            if _identity(fd) != levels[-1][0]:
                raise OSError(errno.ESTALE, "a directory was moved while it was removed",
                              name)
            os.rmdir(levels[-1][1].pop(), dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _unlink_files(fd: int) -> list[str]:
    """Unlink every entry of the directory ``fd`` but its subdirectories (returned)."""
    dirs = []
    with os.scandir(fd) as it:
        for e in it:
            if e.is_dir(follow_symlinks=False):
                dirs.append(e.name)
            else:
                os.unlink(e.name, dir_fd=fd)
    return dirs


def disk_usage(path: str) -> int:
    """Bytes allocated below ``path`` (``du``: blocks, each hard-linked inode once, no
    symlink followed)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [path]
    while stack:
        here = stack.pop()
        st = os.lstat(here)
        total += st.st_blocks * 512
        with os.scandir(here) as it:
            for e in it:
                est = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(est.st_mode):
                    stack.append(e.path)
                    continue
                if est.st_nlink > 1:
                    if (est.st_dev, est.st_ino) in seen:
                        continue
                    seen.add((est.st_dev, est.st_ino))
                total += est.st_blocks * 512
    return total
