"""``governor launch``: run a command inside a group from its first instruction, optionally
as a minimal container (new pid, mount, uts, ipc, net namespaces) and as another user.

Sequence in the forked child, before exec: join the group (its own pid written to the
group's ``cgroup.procs`` through the cgroupfs choke point, so no instant of the command
runs outside) -> close every inherited descriptor above 2 -> with ``--user``, a new
session (``setsid``) -> unshare(2) the namespaces -> mount propagation made private,
hostname, loopback up -> with a new pid namespace, fork once more so the command is pid 1
and mount a fresh ``/proc`` -> drop to the user (setgroups, setgid, setuid, checked, then
``PR_SET_NO_NEW_PRIVS``) -> with ``--unshare user``, a user namespace in which the command
keeps its own ids (last: the mounts and the drop need the host's) -> execvpe.  A failure on
the way is sent to the parent through a close-on-exec pipe (EOF means exec succeeded), as
subprocess does.  With ``--image`` (governor.placement.container) the child builds the
container's root (governor.placement.rootfs) where it would mount ``/proc``, and takes the
user and environment from the image.

What the command inherits (issue 15: a launch must not hand root's secrets to a tenant):

* **environment**: never the caller's.  The command gets
  :func:`~governor.placement.identity.launch_env`: ``PATH`` set to a fixed safe default,
  ``HOME``, ``USER``, ``LOGNAME`` and ``SHELL`` from the passwd entry of the user it runs
  as, ``TERM``, ``COLORTERM``, ``LANG``, ``LANGUAGE``, ``LC_*`` and ``TZ`` copied from
  the caller, plus what the caller passes by name with ``--env
  NAME=VALUE`` or ``--env NAME`` (copied when set).  This holds with and without
  ``--user``: ``GOVERNOR_DATABASE`` (a password) or a cloud token in root's shell has no
  business in a tenant's container either.  ``PATH`` also decides where the command is
  looked up.
* **descriptors**: only 0, 1 and 2; every other inherited descriptor is closed (a file
  root opened, a socket), with and without ``--user``.
* **session**: with ``--user`` the command starts a new session (``setsid``), so it has no
  controlling terminal and cannot push input into the caller's terminal (TIOCSTI); Ctrl-C
  still reaches it, forwarded by governor.  Without ``--user`` it runs as the caller and
  keeps the caller's terminal (a root shell in a group keeps its job control).
* **groups**: with ``--user``, the supplementary groups are the target user's own
  (``getgrouplist``, as initgroups(3) in su and runuser), never root's; then setgid,
  setuid, and a check that the real, effective and saved ids are the user's, the groups
  are exactly the user's and ``setuid(0)`` fails; a launch that cannot prove the drop
  fails (125) instead of running the command.

With ``oom.actions = ["restart"]`` in the group's policy, ``governor launch`` supervises
the command: a run killed by the OOM killer (SIGKILL while the group's ``oom_kill`` or
``oom_group_kill`` counter in ``memory.events`` went up) is started again, in fresh
namespaces, after ``oom.restart_backoff`` (doubled each time, at most 300 s), at most
``oom.restart_max`` times; the last exit code is returned.  SIGTERM or SIGINT during a wait
ends the launch.

Exit codes follow env(1) and ``docker run``: the command's own code; 128+N when signal N
killed it; 125 when governor could not launch it (missing group, bad user, no permission
for a namespace); 126 when the command was found but cannot be executed; 127 when it was not
found.  Usage errors (a missing option) exit 2, as every governor command.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Final

from governor.cgroupfs import parse, tree
from governor.cgroupfs.files import CgroupFS
from governor.errors import CgroupError, GovernorError
from governor.placement.identity import (
    EXIT_LAUNCH_FAILED,
    LaunchError,
    User,
    caller_user,
    launch_env,
    resolve_user,
)

if TYPE_CHECKING:
    from governor.driver import Tree
    from governor.placement.rootfs import Rootfs

EXIT_NOT_EXECUTABLE: Final = 126
EXIT_NOT_FOUND: Final = 127

# sched.h
CLONE_NEWNS: Final = 0x00020000
CLONE_NEWUTS: Final = 0x04000000
CLONE_NEWIPC: Final = 0x08000000
CLONE_NEWNET: Final = 0x40000000
CLONE_NEWPID: Final = 0x20000000
CLONE_NEWCGROUP: Final = 0x02000000
CLONE_NEWUSER: Final = 0x10000000
NAMESPACES: Final = {"pid": CLONE_NEWPID, "mount": CLONE_NEWNS, "uts": CLONE_NEWUTS,
                     "ipc": CLONE_NEWIPC, "net": CLONE_NEWNET, "cgroup": CLONE_NEWCGROUP,
                     "user": CLONE_NEWUSER}
# mount.h
MS_NOSUID: Final = 2
MS_NODEV: Final = 4
MS_NOEXEC: Final = 8
MS_REC: Final = 0x4000
MS_PRIVATE: Final = 1 << 18
PR_SET_NO_NEW_PRIVS: Final = 38
PR_SET_PDEATHSIG: Final = 1
# sockios.h / if.h
SIOCGIFFLAGS: Final = 0x8913
SIOCSIFFLAGS: Final = 0x8914
IFF_UP: Final = 0x1
FORWARDED: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def parse_unshare(spec: str | None) -> int:
    """``"pid,mount,net"`` -> CLONE_* flags; a new pid namespace brings a mount namespace
    (its fresh ``/proc`` must not cover the host's)."""
    flags = 0
    for name in filter(None, (x.strip() for x in (spec or "").split(","))):
        if name not in NAMESPACES:
            raise LaunchError(f"unknown namespace {name!r}; use "
                              f"{', '.join(NAMESPACES)}")
        flags |= NAMESPACES[name]
    if flags & CLONE_NEWPID:
        flags |= CLONE_NEWNS
    return flags


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def loopback_up() -> None:
    """``ip link set lo up`` through SIOCSIFFLAGS."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def wait_status(status: int) -> int:
    """A wait status -> an exit code (128+N for signal N)."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status)


def _forward_to(pid: int) -> None:
    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)


def _wait(pid: int) -> int:
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return wait_status(status)
        except ChildProcessError:
            return EXIT_LAUNCH_FAILED
        except InterruptedError:
            continue


def close_inherited(keep: int) -> None:
    """Close every descriptor above 2 but ``keep`` (the error pipe, close-on-exec): the
    command must not inherit a file or socket governor's caller had open."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != keep:
            with contextlib.suppress(OSError):  # the listing's own descriptor, gone
                os.close(fd)


def verify_dropped(user: User) -> None:
    """After setuid: raise unless every id is the user's and root cannot be regained."""
    ids = (os.getresuid(), os.getresgid(), sorted(set(os.getgroups())))
    want = ((user.uid,) * 3, (user.gid,) * 3, sorted(set(user.groups)))
    if ids != want:
        raise OSError(0, f"privileges not dropped to {user.name}: uids/gids/groups "
                         f"{ids}, expected {want}")
    if user.uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise OSError(0, f"privileges not dropped to {user.name}: setuid(0) succeeded")


def _fail(wfd: int, stage: str, err: int, detail: str) -> None:
    """In the child: report a failure to the parent and leave."""
    try:
        os.write(wfd, f"{stage}\0{err}\0{detail}".encode("utf-8", "replace"))
    finally:
        code = EXIT_LAUNCH_FAILED
        if stage == "exec":
            code = EXIT_NOT_FOUND if err == errno.ENOENT else EXIT_NOT_EXECUTABLE
        os._exit(code)


def enter_user_ns(uid: int, gid: int) -> None:
    """A new user namespace in which the process keeps its own uid and gid (the one-line
    maps user_namespaces(7) lets a process write for itself): its capabilities then
    reach only what that namespace owns, not the namespaces and mounts made before."""
    if _libc.unshare(CLONE_NEWUSER) != 0:
        err = ctypes.get_errno()
        why = ""
        if err == errno.EPERM:  # user_namespaces(7), unshare(2) EPERM
            why = (" (the kernel refuses a user namespace to a process whose root is not its "
                   "mount namespace's, as in a chroot, and to a thread of a multithreaded "
                   "process)")
        elif err == errno.ENOSPC:
            why = " (user.max_user_namespaces reached: sysctl user.max_user_namespaces)"
        raise OSError(err, f"unshare user: {os.strerror(err)}{why}")
    for name, text in (("setgroups", "deny"), ("gid_map", f"{gid} {gid} 1"),
                       ("uid_map", f"{uid} {uid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _child(wfd: int, *, fs: CgroupFS, rel: str, flags: int, hostname: str | None,
           user: User | None, argv: Sequence[str], env: dict[str, str],
           rootfs: Rootfs | None = None) -> None:
    """Runs in the forked child; never returns.  With ``rootfs`` (``--image``) the child
    dies with its parent (PR_SET_PDEATHSIG: a container never outlives the launch that
    records it) and builds the container's root (governor.placement.rootfs) where the
    plain launch mounts ``/proc``; the user and environment then come from the image."""
    stage = "cgroup"
    try:
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        tree.move(fs, rel, os.getpid())  # join the group: everything after runs inside
        if rootfs is not None:
            stage = "pdeathsig"
            _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
        stage = "descriptors"
        close_inherited(wfd)
        if user is not None or rootfs is not None:
            stage = "session"
            os.setsid()  # no controlling terminal: no TIOCSTI into the caller's
        if flags & ~CLONE_NEWUSER:
            stage = "unshare"  # the user namespace comes last, after the mounts
            _check(_libc.unshare(flags & ~CLONE_NEWUSER), "unshare")
        if flags & CLONE_NEWNS:
            stage = "mount"
            _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None),
                   "make / private")
        if flags & CLONE_NEWUTS and hostname:
            stage = "hostname"
            name = hostname.encode()
            _check(_libc.sethostname(name, len(name)), "sethostname")
        if flags & CLONE_NEWNET:
            stage = "loopback"
            loopback_up()
        if flags & CLONE_NEWPID:
            # unshare(CLONE_NEWPID) applies to children: fork once more so the command is
            # pid 1 of the new namespace; this process stays to wait and forward signals
            pid = os.fork()
            if pid:
                os.close(wfd)
                _forward_to(pid)
                os._exit(_wait(pid))
            if rootfs is not None:
                stage = "pdeathsig"
                _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
            else:
                stage = "proc"
                _check(_libc.mount(b"proc", b"/proc", b"proc",
                                   MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mount /proc")
        if rootfs is not None:
            stage = "rootfs"
            user, env = rootfs.enter()
        if user is not None:
            stage = "user"
            os.setgroups(list(user.groups))
            os.setgid(user.gid)
            os.setuid(user.uid)
            verify_dropped(user)
            _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        if flags & CLONE_NEWUSER:
            stage = "userns"
            enter_user_ns(os.getuid(), os.getgid())
        if rootfs is not None:  # the setuid above cleared it
            _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
        stage = "exec"
        os.execvpe(argv[0], list(argv), env)  # noqa: S606 - running the user's command is the point
    except CgroupError as e:
        _fail(wfd, stage, e.errno, str(e))
    except OSError as e:
        _fail(wfd, stage, e.errno or 0, e.strerror or str(e))
    except GovernorError as e:
        _fail(wfd, stage, 0, str(e))
    except BaseException as e:  # never return into the parent's code in the child
        _fail(wfd, stage, 0, repr(e))


@dataclass(frozen=True)
class Restart:
    """The ``restart`` OOM action of the group (from its policy): at most ``max_restarts``
    restarts, the first after ``backoff`` seconds, each later one after twice the last wait,
    up to ``backoff_cap`` seconds."""

    max_restarts: int
    backoff: float
    backoff_cap: float = 300.0

    def delay(self, n: int) -> float:
        """The wait before restart number ``n`` (1-based)."""
        return float(min(self.backoff * 2 ** (n - 1), self.backoff_cap))


def oom_kills(fs: CgroupFS, rel: str) -> int | None:
    """The group's ``oom_kill`` + ``oom_group_kill`` counters (``memory.events``); None when
    the memory controller is off in the group (no file: nothing to compare)."""
    try:
        text = fs.read(rel, "memory.events")
    except CgroupError as e:
        if e.errno == errno.ENOENT:
            return None
        raise LaunchError(str(e)) from e
    ev = parse.parse_flat_keyed(text, "memory.events")
    return ev.get("oom_kill", 0) + ev.get("oom_group_kill", 0)


class _Supervisor:
    """Signal state of the launching process: SIGTERM/SIGINT/SIGHUP go to the running
    child; between runs (a restart backoff) they end the launch instead."""

    def __init__(self) -> None:
        self.child: int | None = None
        self.stopped: int | None = None  # the signal that asked us to stop
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def __enter__(self) -> _Supervisor:
        for sig in FORWARDED:
            signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child, signum)
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stopped = signum
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"x")

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds``; False when a stop signal came first."""
        deadline = time.monotonic() + seconds
        while self.stopped is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            with contextlib.suppress(InterruptedError):
                select.select([self._wake_r], [], [], left)
        return False


def _run_once(fs: CgroupFS, rel: str, argv: Sequence[str], sup: _Supervisor, *,
              flags: int, hostname: str | None, user: User | None,
              env: dict[str, str], rootfs: Rootfs | None) -> int:
    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        _child(wfd, fs=fs, rel=rel, flags=flags, hostname=hostname, user=user, argv=argv,
               env=env, rootfs=rootfs)
    sup.child = pid
    os.close(wfd)
    try:
        with os.fdopen(rfd, "rb") as r:
            report = r.read()
        code = _wait(pid)
    finally:
        sup.child = None
    if report:
        stage, err_s, detail = report.decode("utf-8", "replace").split("\0", 2)
        err = int(err_s)
        if stage == "exec":
            what = "command not found" if err == errno.ENOENT else "cannot execute"
            print(f"governor: launch: {argv[0]}: {what}: {detail}", file=sys.stderr)
            return EXIT_NOT_FOUND if err == errno.ENOENT else EXIT_NOT_EXECUTABLE
        hint = ""
        if err in (errno.EPERM, errno.EACCES) and stage != "userns":
            hint = " (run as root: namespaces, mounts and other users need privileges)"
        raise LaunchError(f"cannot launch {argv[0]!r} ({stage} step): {detail}{hint}")
    return code


def where_to_launch(tree: Tree, target: str) -> str:
    """The cgroup (relative to the mount) a launch into group ``target`` runs in: the
    group's directory; with the systemd driver a scope of its own below the group's slice,
    started now with this process in it (``systemd-run --scope``), so the command and the
    supervising ``governor launch`` are a unit of the tenant's that outlives the caller's."""
    rel = tree.layout.path(target)
    if not tree.fs.exists(rel):
        raise LaunchError(f"group {target} does not exist ({tree.fs.root}/{rel}): run "
                          "`governor policy apply` to create it")
    if tree.driver is not None:
        try:
            rel = tree.driver.launch_scope(target)
        except CgroupError as e:
            raise LaunchError(f"cannot start the scope of {target}: {e}") from e
    return rel


def launch(fs: CgroupFS, rel: str, argv: Sequence[str], *, unshare: str | None = None,
           hostname: str | None = None, user: str | None = None,
           env: Mapping[str, str] | None = None, restart: Restart | None = None,
           rootfs: Rootfs | None = None, caller: Mapping[str, str] | None = None) -> int:
    """Run ``argv`` in group ``rel`` (relative to ``fs``); returns its exit code.

    With ``rootfs`` (``launch --image``, governor.placement.container) the command runs
    in that root filesystem (which needs ``mount`` in ``unshare``); ``user`` and ``env``
    are then unused: the user and the environment are resolved in the image.

    The command's environment is :func:`~governor.placement.identity.launch_env` of
    ``caller`` (the environment of who asked for the launch: governor's own by default, a
    ``governor-launch`` client's in the launcher), with ``env`` the variables passed
    explicitly (``--env``); nothing else of the caller's is passed.

    With ``restart`` (the group's ``oom.actions`` has ``restart``), a run that ends by
    SIGKILL while the group's OOM-kill counters went up is started again after the backoff,
    at most ``restart.max_restarts`` times; each restart is announced on stderr.  Any other
    ending (an exit code, another signal, a SIGKILL that was not an OOM kill, a stop signal
    to governor) is final.

    Raises :class:`LaunchError` for governor's own failures (exit 125); a command that is
    not found or not executable is reported on stderr and returns 127 or 126.
    """
    if not argv:
        raise LaunchError("no command given: governor launch ... -- CMD [ARGS...]")
    flags = parse_unshare(unshare)
    if hostname and not flags & CLONE_NEWUTS:
        raise LaunchError("--hostname needs --unshare uts (it would rename the host)")
    if not fs.exists(rel):
        raise LaunchError(f"group {rel} does not exist in {fs.root}: run `governor policy "
                          "apply` to create it")
    if rootfs is not None:
        if not flags & CLONE_NEWNS:
            raise LaunchError("an image needs its own mount namespace (--unshare mount)")
        who, environ = None, {}
    else:
        who = resolve_user(user) if user is not None else None
        environ = launch_env(os.environ if caller is None else caller,
                             who if who is not None else caller_user(), env)
    restarts = 0
    with _Supervisor() as sup:
        while True:
            kills_before = oom_kills(fs, rel) if restart is not None else None
            code = _run_once(fs, rel, argv, sup, flags=flags, hostname=hostname, user=who,
                             env=environ, rootfs=rootfs)
            if restart is None or code != 128 + signal.SIGKILL or sup.stopped is not None:
                return code
            kills_after = oom_kills(fs, rel)
            if kills_before is None or kills_after is None or kills_after <= kills_before:
                return code  # killed, but not by the OOM killer
            if restarts >= restart.max_restarts:
                print(f"governor: launch: {argv[0]}: OOM-killed in {rel} (oom_kill "
                      f"{kills_before} -> {kills_after}); not restarted: "
                      f"{restarts} of {restart.max_restarts} restarts used", file=sys.stderr)
                return code
            restarts += 1
            delay = restart.delay(restarts)
            print(f"governor: launch: {argv[0]}: OOM-killed in {rel} (oom_kill "
                  f"{kills_before} -> {kills_after}); restart {restarts} of "
                  f"{restart.max_restarts} in {delay:g}s", file=sys.stderr, flush=True)
            if not sup.sleep(delay):
                return code
