"""``governor sandbox exec``: boot a fresh guest for one command, relay its output,
return its exit code (see :mod:`governor.sandbox` for what the guest looks like)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from governor.sandbox.cache import Cache, default_cache_dir
from governor.sandbox.errors import SandboxError, SandboxNotReady
from governor.sandbox.guest import command_script, guest_config, tmp_keep
from governor.sandbox.host import check_systemd_host, qemu_binary
from governor.sandbox.qemu import BootSpec, check_host_forward, qemu_argv
from governor.sandbox.systemd_mode import host_generators, write_systemd_files

__all__ = ["EXIT_NO_STATUS", "EXIT_TIMEOUT", "exec_"]

EXIT_TIMEOUT = 124
EXIT_NO_STATUS = 125


class _Tail(threading.Thread):
    """Follows a file QEMU appends to and copies what arrives to ``sink`` (a byte stream)."""

    def __init__(self, path: Path, sink: IO[bytes], prefix: bytes = b"") -> None:
        super().__init__(daemon=True)
        self.path = path
        self.sink = sink
        self.prefix = prefix
        self.done = threading.Event()

    def run(self) -> None:
        with self.path.open("rb") as f:
            while True:
                finished = self.done.is_set()
                data = f.read(65536)
                if data:
                    self._emit(data)
                    continue
                if finished:
                    return
                self.done.wait(0.05)

    def _emit(self, data: bytes) -> None:
        if self.prefix:
            data = b"".join(self.prefix + ln for ln in data.splitlines(keepends=True))
        try:
            self.sink.write(data)
            self.sink.flush()
        except (OSError, ValueError):  # our own stdout went away: keep draining
            pass


def _binary(stream: IO[str] | IO[bytes]) -> IO[bytes]:
    buf = getattr(stream, "buffer", None)
    return buf if buf is not None else stream  # type: ignore[return-value]


def exec_(
    argv: Sequence[str],
    *,
    cache_dir: Path | None = None,
    rwdirs: Sequence[Path] = (),
    env: Mapping[str, str] | None = None,
    mem_mb: int = 1024,
    cpus: int = 2,
    disk_mb: int = 256,
    timeout: float = 600,
    verbose: bool = False,
    port_forwards: Sequence[tuple[int, int]] = (),
    host_forwards: Sequence[tuple[str, int, int]] = (),
    cwd: Path | None = None,
    stdout: IO[bytes] | None = None,
    stderr: IO[bytes] | None = None,
    systemd: bool = False,
) -> int:
    """Run ``argv`` as root inside a fresh sandbox guest; return its exit code.

    See the module docstring for what the guest looks like; 124 = timed out after
    ``timeout`` seconds, 125 = the guest reported no exit code (console tail on stderr).
    ``systemd=True``: the guest boots systemd as PID 1 and runs ``argv`` as a service.
    """
    cache = Cache(Path(cache_dir) if cache_dir else default_cache_dir())
    if not cache.ready():
        raise SandboxNotReady(
            f"the sandbox in {cache.root} is not set up or out of date: "
            "run `governor sandbox setup`"
        )
    qemu = qemu_binary()
    if systemd:
        check_systemd_host()
    if mem_mb < 128 or cpus < 1 or disk_mb < 0 or timeout <= 0:
        raise SandboxError(
            f"bad VM size: mem {mem_mb} MiB (>= 128), cpus {cpus} (>= 1), "
            f"disk {disk_mb} MiB (>= 0), timeout {timeout}s (> 0)"
        )
    for h, g in port_forwards:
        if not (0 < h < 65536 and 0 < g < 65536):
            raise SandboxError(f"bad port forward {h}->{g}: ports are 1..65535")
    for a, g, h in host_forwards:
        check_host_forward(a, g, h)
    rw = []
    for d in rwdirs:
        p = Path(d).resolve()
        if not p.is_dir():
            raise SandboxError(f"read-write directory {d} does not exist (or is not a directory)")
        rw.append(p)
    here = Path(cwd).resolve() if cwd else Path.cwd()
    out_sink = stdout or _binary(sys.stdout)
    err_sink = stderr or _binary(sys.stderr)

    work = Path(tempfile.mkdtemp(prefix="governor-sandbox-"))
    try:
        host_path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        keep, tmpfs = tmp_keep([str(here), *argv, *host_path.split(":")])
        config, rwlist, keeplist = guest_config(
            cwd=here,
            modules_dir=cache.modules_dir(),
            net=bool(port_forwards or host_forwards),
            rwdirs=rw,
            keep=keep,
            tmpfs=tmpfs,
            systemd=systemd,
        )
        (work / "config").write_text(config)
        (work / "rwdirs").write_text(rwlist)
        (work / "keep").write_text(keeplist)
        (work / "cmd.sh").write_text(
            command_script(
                argv,
                cwd=here,
                env=env or {},
                path=host_path,
                home=os.environ.get("HOME", "/root"),
            )
        )
        if systemd:
            write_systemd_files(work, host_generators())
        for name in ("out", "err", "console.log"):
            (work / name).touch()
        disk = None
        if disk_mb:
            disk = work / "disk.img"
            with disk.open("wb") as f:
                f.truncate(disk_mb * 1024 * 1024)
        spec = BootSpec(
            qemu=qemu,
            vmlinux=cache.vmlinux,
            initramfs=cache.initramfs,
            workdir=work,
            mem_mb=mem_mb,
            cpus=cpus,
            disk=disk,
            rwdirs=tuple(rw),
            port_forwards=tuple(port_forwards),
            host_forwards=tuple(host_forwards),
            python=sys.executable,
            verbose=verbose,
            systemd=systemd,
            append=os.environ.get("GOVERNOR_SANDBOX_APPEND", ""),
        )
        return _boot(spec, timeout, out_sink, err_sink)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _boot(spec: BootSpec, timeout: float, out_sink: IO[bytes], err_sink: IO[bytes]) -> int:
    work = spec.workdir
    tails = [_Tail(work / "out", out_sink), _Tail(work / "err", err_sink)]
    if spec.verbose:
        tails.append(_Tail(work / "console.log", err_sink, prefix=b"[guest] "))
    for t in tails:
        t.start()
    qemu_log = (work / "qemu.log").open("wb")
    t0 = time.monotonic()
    timed_out = False
    try:
        proc = subprocess.Popen(
            qemu_argv(spec), stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=qemu_log
        )
        try:
            qrc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            qrc = proc.wait()
        except BaseException:  # Ctrl-C: never leave a QEMU behind
            proc.kill()
            proc.wait()
            raise
    finally:
        qemu_log.close()
        for t in tails:
            t.done.set()
        for t in tails:
            t.join(timeout=10)
    elapsed = time.monotonic() - t0
    rc_text = _read(work / "rc").strip()
    if rc_text.isdigit() and not timed_out:
        return int(rc_text)

    def say(msg: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            err_sink.write(msg.encode(errors="replace"))
            err_sink.flush()

    if timed_out:
        say(f"governor sandbox: timed out after {timeout:g}s; QEMU killed\n")
        return EXIT_TIMEOUT
    say(
        f"governor sandbox: the guest reported no exit code (QEMU exit {qrc} after "
        f"{elapsed:.1f}s)\n"
    )
    qlog = _read(work / "qemu.log").strip()
    if qlog:
        say("--- QEMU said:\n" + "\n".join(qlog.splitlines()[-20:]) + "\n")
    console = _read(work / "console.log").splitlines()
    say("--- guest console (last 30 lines):\n" + "\n".join(console[-30:]) + "\n")
    return EXIT_NO_STATUS


def _read(p: Path) -> str:
    try:
        return p.read_text(errors="replace")
    except OSError:
        return ""
