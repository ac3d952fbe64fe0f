"""The node's identity: a uuid4 made at the daemon's first start and kept in its state
directory (:data:`UID_FILE`), so that the node keeps its rows in the database when the host
is renamed (``nodes.uid``, migration 0004; :func:`governor.store.service.ensure_node`).

The file is written once: to a temporary file in the same directory, fsynced, renamed
over the name, and the directory fsynced (a crash leaves either no file or a whole one),
mode 0600, through :class:`~governor.security.StateDir` (no symlink followed).  A flock
on the state directory itself (no lock file left behind) keeps two daemons of one host
(two subtrees, one state directory) from making two identities at their first start.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from pathlib import Path
from typing import Final

from governor.errors import ConfigError, GovernorError
from governor.security import StateDir

#: the node uid's file in ``[governor] state_dir``
UID_FILE: Final = "node-uid"


def _read(d: StateDir) -> str | None:
    try:
        fd = d.open(UID_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        raw = os.read(fd, 128)
    finally:
        os.close(fd)
    where = os.path.join(d.path, UID_FILE)
    text = raw.decode(errors="replace").strip()
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise ConfigError(
            f"not a node uid: {text[:40]!r} (a UUID such as "
            f"0f8fad5b-d9cb-469f-a165-70867728950e). Fix: put back this node's uid (the "
            f"`uid` of its row in the database's nodes table), or remove the file to make "
            f"a new identity", file=where) from None


def read_node_uid(state_dir: str | os.PathLike[str]) -> str | None:
    """The node uid kept in ``state_dir``, None when there is none (never made: a command
    run on a host whose daemon never started) or the directory cannot be read."""
    try:
        d = StateDir(Path(state_dir), create=False)
    except (OSError, GovernorError):
        return None
    try:
        return _read(d)
    finally:
        d.close()


def load_node_uid(state_dir: str | os.PathLike[str]) -> str:
    """The node uid kept in ``state_dir`` (made, mode 0600, when there is none)."""
    d = StateDir(Path(state_dir))
    try:
        found = _read(d)
        if found is not None:
            return found
        try:
            fcntl.flock(d.fd, fcntl.LOCK_EX)
            found = _read(d)  # made by the other daemon while this one waited
            if found is not None:
                return found
            made = str(uuid.uuid4())
            tmp = f".{UID_FILE}.{os.getpid()}.tmp"
            d.unlink(tmp)
            fd = d.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.fchmod(fd, 0o600)  # whatever the umask
                os.write(fd, f"{made}\n".encode())
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                d.unlink(tmp)
                raise
            os.close(fd)
            d.replace(tmp, UID_FILE)
            d.fsync()
            return made
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(d.fd, fcntl.LOCK_UN)
    finally:
        d.close()
