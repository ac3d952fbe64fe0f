"""The warm launcher: ``governor launcher`` serves ``governor-launch`` (issue #19).

``governor launch`` is a Python program: in a slow machine (the CI's TCG VM) the
interpreter's own start is longer than ``runc run``'s whole launch.  The launcher is a
process that has imported the launch path, read its configuration and policy already and
waits on a unix socket; ``governor-launch`` (governor/placement/_launch_client.c) is a
small C program that hands it the arguments, the environment and descriptors 0-2, as
containerd's and Docker's clients hand a run to their daemons.

For each request the launcher forks a *shim*: the process that runs the launch exactly as
``governor launch`` would (the same options, rules and exit codes), with the client's
descriptors as its 0-2, then sends the exit code
back.  The client's environment is the caller's of that launch (what its command may
inherit: terminal and locale variables, ``--env NAME``), never the environment governor's
own work runs with (PATH for mkfs and mount stays the launcher's).  The shim, not the
launcher, is the container's parent and holds the connection, so stopping or restarting
the launcher touches no running container and no waiting client
(the unit says ``KillMode=process``, as containerd.service does).  The signals the client
gets (SIGTERM, SIGINT, SIGHUP) arrive as bytes on the connection and are raised in the shim,
whose launch forwards them as ``governor launch`` does; a client that goes away without its
exit code is a hangup (SIGHUP), as its terminal closing would be.

Only root may launch (``governor launch`` needs root too): the socket is 0600 and each
peer's uid is checked again (SO_PEERCRED).  The protocol is in the client's header.
"""

from __future__ import annotations

import array
import contextlib
import logging
import os
import selectors
import signal
import socket
import stat
import struct
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Generic, TypeVar

from governor.errors import GovernorError

log = logging.getLogger("governor.launcher")

MAGIC: Final = b"GLR1"
#: the largest request body (arguments and environment) taken; the client checks it too
MAX_REQUEST: Final = 4 << 20
#: seconds a client has to send its whole request
REQUEST_TIMEOUT: Final = 5.0
#: the signals a client relays (governor.placement.launch.FORWARDED)
RELAYED: Final = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
EXIT_LAUNCH_FAILED: Final = 125
_HEADER: Final = struct.Struct("=4sI")
_COUNTS: Final = struct.Struct("=II")
_REPLY: Final = struct.Struct("=ci")
_PEERCRED: Final = struct.Struct("=iII")  # struct ucred: pid, uid, gid


T = TypeVar("T")


class LauncherError(GovernorError):
    """The launcher's socket cannot be served, or a request is malformed."""


@dataclass
class Request:
    """One client's launch: its arguments (after the program name), its environment and
    its descriptors 0-2 (received: this process owns them until :meth:`close`)."""

    argv: list[str]
    env: dict[str, str]
    fds: tuple[int, int, int]
    pid: int = 0
    uid: int = -1
    closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for fd in self.fds:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _recv_exact(conn: socket.socket, n: int, what: str) -> bytes:
    chunks: list[bytes] = []
    while n > 0:
        try:
            b = conn.recv(min(n, 1 << 16))
        except TimeoutError:
            raise LauncherError(f"the client sent no {what} within {REQUEST_TIMEOUT:g} s") \
                from None
        if not b:
            raise LauncherError(f"the connection ended before the {what} was whole")
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


def parse_body(body: bytes) -> tuple[list[str], dict[str, str]]:
    """The body of a request -> (arguments, environment); raises :class:`LauncherError`."""
    if len(body) < _COUNTS.size:
        raise LauncherError("the request is shorter than its counts")
    nargs, nenv = _COUNTS.unpack_from(body)
    parts = body[_COUNTS.size:].split(b"\0")
    if parts[-1] != b"" or len(parts) - 1 != nargs + nenv:
        raise LauncherError(f"the request holds {len(parts) - 1} strings, not the "
                            f"{nargs} arguments + {nenv} variables it announces")
    strings = [p.decode("utf-8", "surrogateescape") for p in parts[:-1]]
    env: dict[str, str] = {}
    for item in strings[nargs:]:
        name, sep, value = item.partition("=")
        if sep and name:  # the same as os.environ makes of such an environment
            env.setdefault(name, value)
    return strings[:nargs], env


def receive(conn: socket.socket) -> Request | None:
    """Read one request and its three descriptors from ``conn``; None for a connection
    closed before sending anything (a probe: ``governor doctor``, a new launcher's check
    for a live one)."""
    fds = array.array("i")
    try:
        first, anc, _flags, _ = conn.recvmsg(_HEADER.size,
                                             socket.CMSG_SPACE(8 * fds.itemsize))
    except TimeoutError:
        raise LauncherError(f"the client sent nothing within {REQUEST_TIMEOUT:g} s") from None
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    got = list(fds)
    if not first and not got:
        return None
    try:
        if len(got) != 3:
            raise LauncherError(f"the client passed {len(got)} descriptors, not its 0, 1 "
                                "and 2")
        head = first + (_recv_exact(conn, _HEADER.size - len(first), "header")
                        if len(first) < _HEADER.size else b"")
        magic, size = _HEADER.unpack(head)
        if magic != MAGIC:
            raise LauncherError(f"not a governor-launch request (magic {magic!r}, expected "
                                f"{MAGIC!r}): a client of another version?")
        if size > MAX_REQUEST:
            raise LauncherError(f"a request of {size} bytes; at most {MAX_REQUEST} are "
                                "taken")
        argv, env = parse_body(_recv_exact(conn, size, "request"))
    except BaseException:
        for fd in got:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise
    return Request(argv, env, (got[0], got[1], got[2]))


def reply(conn: socket.socket, code: int) -> None:
    """Send the exit code; a client gone already is not an error."""
    with contextlib.suppress(OSError):
        conn.sendall(_REPLY.pack(b"X", code))


def _refuse(conn: socket.socket) -> None:
    """Reply 125 to a request not taken, after reading what it sent (a unix socket closed
    with unread bytes resets the peer's, which would lose the reply), at most 8 MiB."""
    with contextlib.suppress(OSError):
        conn.settimeout(0.2)
        left = 2 * MAX_REQUEST
        while left > 0 and (b := conn.recv(1 << 16)):
            left -= len(b)
    reply(conn, EXIT_LAUNCH_FAILED)


def bind(path: str) -> socket.socket:
    """Listen on ``path``: a unix socket only root can connect to.  A socket left by a
    launcher that died is replaced; one a live launcher serves, or anything that is not a
    socket, is refused."""
    p = Path(path)
    try:
        p.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        st = p.lstat()
    except FileNotFoundError:
        pass
    except OSError as e:
        raise LauncherError(f"launcher socket {path}: {e.strerror} (errno {e.errno})") from e
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise LauncherError(f"launcher socket {path}: exists and is not a socket; "
                                "remove it or set [launcher] socket elsewhere")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: left by a launcher that died
        else:
            raise LauncherError(f"launcher socket {path}: another launcher serves it "
                                "already")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as e:
        sock.close()
        raise LauncherError(f"launcher socket {path}: {e.strerror} (errno {e.errno})") from e
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


def _relay(conn: socket.socket) -> None:
    """In the shim: raise each relayed signal the client sends in this process (its main
    thread's launch forwards them); the client gone is a hangup."""
    while True:
        try:
            data = conn.recv(64)
        except OSError:
            data = b""
        if not data:
            os.kill(os.getpid(), signal.SIGHUP)
            return
        for b in data:
            if b in RELAYED:
                os.kill(os.getpid(), b)


def _shim(conn: socket.socket, req: Request, handle: Callable[[Request], int],
          close: Sequence[int]) -> None:
    """The forked child: run the launch with the client's descriptors and environment,
    send its exit code; never returns."""
    code = EXIT_LAUNCH_FAILED
    try:
        signal.set_wakeup_fd(-1)
        for sig in (*RELAYED, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        for fd in close:
            with contextlib.suppress(OSError):
                os.close(fd)
        os.setsid()  # not in the launcher's session (nor its terminal, when it has one)
        for i, fd in enumerate(req.fds):
            os.dup2(fd, i)
        for fd in req.fds:
            if fd > 2:
                os.close(fd)
        # what the launch prints is the client's; the launcher's log lines are not (a
        # warning reaches the client's stderr as it would from `governor launch`)
        logging.getLogger("governor").handlers.clear()
        conn.settimeout(None)
        threading.Thread(target=_relay, args=(conn,), daemon=True,
                         name="launcher-relay").start()
        code = handle(req)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except BaseException as e:  # never return into the launcher's loop in the child
        with contextlib.suppress(Exception):
            print(f"governor-launch: error: {e!r}", file=sys.stderr, flush=True)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        reply(conn, code)
        os._exit(0)


class Launcher:
    """The accept loop.  ``handle(request)`` runs in each forked shim and returns the exit
    code; ``before_fork()`` runs in the launcher before each fork (to refresh what the
    shims inherit, e.g. the policy); ``on_reload()`` on SIGHUP."""

    def __init__(self, sock: socket.socket, handle: Callable[[Request], int], *,
                 before_fork: Callable[[], None] | None = None,
                 on_reload: Callable[[], None] | None = None,
                 ready: Callable[[], None] | None = None) -> None:
        self.sock = sock
        self.handle = handle
        self.before_fork = before_fork
        self.on_reload = on_reload
        self.ready = ready
        self.launched = 0

    def serve(self) -> None:
        """Serve until SIGTERM or SIGINT; the shims live on."""
        wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
        old = {s: signal.signal(s, lambda *_: None) for s in handled}
        old_fd = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ)
        sel.register(wake_r, selectors.EVENT_READ)
        try:
            if self.ready is not None:
                self.ready()
            while True:
                for key, _ in sel.select():
                    if key.fd == wake_r:
                        sigs = os.read(wake_r, 256)
                        self._reap()
                        if signal.SIGHUP in sigs and self.on_reload is not None:
                            self.on_reload()
                        if signal.SIGTERM in sigs or signal.SIGINT in sigs:
                            return
                    else:
                        self._accept((wake_r, wake_w, sel.fileno()))
        finally:
            signal.set_wakeup_fd(old_fd)
            for s, h in old.items():
                signal.signal(s, h)
            sel.close()
            os.close(wake_r)
            os.close(wake_w)

    def _reap(self) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def _accept(self, own: tuple[int, ...]) -> None:
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        with conn:
            conn.settimeout(REQUEST_TIMEOUT)
            try:
                req = receive(conn)
            except (LauncherError, OSError) as e:
                log.warning("launcher: request refused: %s", e)
                _refuse(conn)
                return
            if req is None:
                return
            try:
                pid, uid, _gid = _PEERCRED.unpack(
                    conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
                req.pid, req.uid = pid, uid
                if uid != 0:
                    log.warning("launcher: request of pid %d (uid %d) refused: only root "
                                "may launch", pid, uid)
                    with contextlib.suppress(OSError):
                        os.write(req.fds[2], b"governor-launch: only root may launch "
                                             b"(as with governor launch)\n")
                    reply(conn, EXIT_LAUNCH_FAILED)
                    return
                if self.before_fork is not None:
                    self.before_fork()
                sys.stdout.flush()
                sys.stderr.flush()
                try:
                    child = os.fork()
                except OSError as e:
                    with contextlib.suppress(OSError):
                        os.write(req.fds[2], f"governor-launch: the launcher cannot fork: "
                                             f"{e.strerror}\n".encode())
                    reply(conn, EXIT_LAUNCH_FAILED)
                    return
                if child == 0:
                    _shim(conn, req, self.handle, (self.sock.fileno(), *own))
                self.launched += 1
                log.debug("launcher: shim %d for pid %d: %s", child, pid, req.argv)
            finally:
                req.close()


class Cached(Generic[T]):
    """What ``load(paths)`` makes of files (a policy), read again only when a file or a
    drop-in directory's listing changed (inode, size, mtime), or on :meth:`refresh`
    ``force``.  A load that fails is kept as the error :meth:`get` raises, so each launch
    reports it the way ``governor launch`` would, until the files are fixed."""

    def __init__(self, paths: Sequence[str], load: Callable[[list[str]], T]) -> None:
        self.paths = list(paths)
        self._load = load
        self._key: tuple[object, ...] | None = None
        self._value: T | None = None
        self._error: GovernorError | None = None
        self.loads = 0

    def _stat_key(self) -> tuple[object, ...]:
        key: list[object] = []
        for p in self.paths:
            try:
                st = os.stat(p)
            except OSError as e:
                key.append((p, e.errno))
                continue
            key.append((p, st.st_ino, st.st_size, st.st_mtime_ns))
            if stat.S_ISDIR(st.st_mode):
                try:
                    names = sorted(os.listdir(p))
                except OSError as e:
                    key.append((p, "list", e.errno))
                    continue
                for n in names:
                    try:
                        s = os.stat(os.path.join(p, n))
                    except OSError as e:
                        key.append((n, e.errno))
                    else:
                        key.append((n, s.st_ino, s.st_size, s.st_mtime_ns))
        return tuple(key)

    def refresh(self, *, force: bool = False) -> None:
        key = self._stat_key()
        if not force and key == self._key:
            return
        self._key = key
        self.loads += 1
        try:
            self._value, self._error = self._load(self.paths), None
        except GovernorError as e:
            self._value, self._error = None, e
            log.error("launcher: %s", e)
        else:
            log.info("launcher: read %s", ", ".join(self.paths))

    def get(self) -> T:
        if self._error is not None:
            raise self._error
        if self._value is None:
            raise LauncherError("nothing loaded yet: refresh() first")
        return self._value


def client_path() -> Path:
    """The built client next to this module (setup.py builds it)."""
    return Path(__file__).resolve().parent / "governor-launch"
