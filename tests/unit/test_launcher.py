"""The warm launcher and its C client (governor/placement/launcher.py, _launch_client.c):
the protocol, descriptors, environment, exit codes, signal relay, refusals, and the
``governor launcher`` command's own parsing and errors.  The launches themselves (cgroups,
namespaces, images) are tested on the real kernel: tests/kernel/test_launcher_kernel.py."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from governor.errors import GovernorError
from governor.placement.launcher import (
    MAGIC,
    Cached,
    LauncherError,
    bind,
    client_path,
    parse_body,
)

CLIENT = client_path()
REPO = Path(__file__).resolve().parents[2]

# a launcher whose "launch" is a small program of its own (the real one needs cgroup v2)
SERVER = textwrap.dedent("""
    import os, signal, sys, time
    from governor.placement.launcher import Launcher, bind

    def handle(req):
        a = req.argv
        if a[:1] == ["wait"]:  # wait for a relayed signal or a hangup; report which
            got = []
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(s, lambda n, f: got.append(n))
            t0 = time.monotonic()
            print("waiting", flush=True)
            while not got and time.monotonic() - t0 < float(a[1]):
                time.sleep(0.01)
            if len(a) > 2:
                with open(a[2], "w") as f:
                    f.write(",".join(str(int(g)) for g in got))
            return 100 + (got[0] if got else 0)
        if a[:1] == ["raise"]:
            raise RuntimeError("boom")
        print("argv=" + "|".join(a), "FOO=" + req.env.get("FOO", "-"),
              "PATH=" + os.environ.get("PATH", "-"),
              "uid=%d" % req.uid, "fds=" + ",".join(sorted(os.listdir("/proc/self/fd"))),
              sep="\\n", flush=True)
        print("on-stderr", file=sys.stderr, flush=True)
        return int(a[0]) if a and a[0].isdigit() else 0

    Launcher(bind(sys.argv[1]), handle, ready=lambda: print("ready", flush=True)).serve()
""")


def _run(args: list[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
    return subprocess.run(args, check=False, capture_output=True, timeout=60, **kw)


def _env(sock: Path, **extra: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "GOVERNOR_LAUNCH_SOCKET": str(sock)}
    env.update(extra)
    return env


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    yield from _serve(tmp_path / "l.sock")


@pytest.fixture
def open_server() -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A launcher in a directory anyone may search (pytest's tmp_path is root's only)."""
    d = Path(tempfile.mkdtemp(prefix="governor-launcher-test-"))
    try:
        d.chmod(0o755)
        yield from _serve(d / "l.sock")
    finally:
        shutil.rmtree(d)


def _serve(sock: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    assert CLIENT.is_file(), f"{CLIENT} not built: setup.py build_ext --inplace builds it"
    p = subprocess.Popen([sys.executable, "-c", SERVER, str(sock)], stdout=subprocess.PIPE,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.stdout is not None
    assert p.stdout.readline() == "ready\n"
    yield sock, p
    p.terminate()
    p.wait(10)


def test_arguments_environment_descriptors_and_exit_code(
        server: tuple[Path, subprocess.Popen[str]]) -> None:
    sock, _ = server
    r = _run([str(CLIENT), "7", "a b", "", "é"], text=True,
                       env=_env(sock, FOO="bar=baz"))
    assert r.returncode == 7
    fields = dict(f.split("=", 1) for f in r.stdout.splitlines())
    assert fields["argv"] == "7|a b||é"
    assert fields["FOO"] == "bar=baz"
    # the shim's own environment stays the launcher's (PATH for governor's own programs)
    assert fields["PATH"] == os.environ.get("PATH", "-")
    assert fields["uid"] == str(os.getuid())
    # the shim holds 0-2 (the client's), the connection and its relay: nothing of the
    # launcher's (its listening socket, its wake-up pipe, its selector)
    assert len(fields["fds"].split(",")) <= 6
    assert r.stderr == "on-stderr\n"


def test_exit_codes_pass_through(server: tuple[Path, subprocess.Popen[str]]) -> None:
    sock, _ = server
    for code in (0, 1, 125, 255):
        r = _run([str(CLIENT), str(code)],
                           env=_env(sock))
        assert r.returncode == code


def test_relayed_signal_reaches_the_shim(server: tuple[Path, subprocess.Popen[str]],
                                         tmp_path: Path) -> None:
    sock, _ = server
    out = tmp_path / "got"
    c = subprocess.Popen([str(CLIENT), "wait", "20", str(out)], stdout=subprocess.PIPE,
                         env=_env(sock))
    assert c.stdout is not None
    assert c.stdout.readline() == b"waiting\n"
    c.send_signal(signal.SIGINT)
    assert c.wait(20) == 100 + signal.SIGINT
    assert out.read_text() == str(int(signal.SIGINT))


def test_client_gone_is_a_hangup(server: tuple[Path, subprocess.Popen[str]],
                                 tmp_path: Path) -> None:
    sock, _ = server
    out = tmp_path / "got"
    c = subprocess.Popen([str(CLIENT), "wait", "20", str(out)], stdout=subprocess.PIPE,
                         env=_env(sock))
    assert c.stdout is not None
    assert c.stdout.readline() == b"waiting\n"
    c.kill()
    c.wait(10)
    deadline = time.monotonic() + 20
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert out.read_text() == str(int(signal.SIGHUP))


def test_shim_outlives_the_launcher(server: tuple[Path, subprocess.Popen[str]],
                                    tmp_path: Path) -> None:
    sock, p = server
    c = subprocess.Popen([str(CLIENT), "wait", "3"], stdout=subprocess.PIPE, env=_env(sock))
    assert c.stdout is not None
    assert c.stdout.readline() == b"waiting\n"
    p.terminate()
    assert p.wait(10) == 0
    # the launch goes on and its client gets its code from the shim
    assert c.wait(30) == 100


def test_an_error_in_the_shim_is_exit_125(server: tuple[Path, subprocess.Popen[str]]) -> None:
    sock, _ = server
    r = _run([str(CLIENT), "raise"], text=True,
                       env=_env(sock))
    assert r.returncode == 125
    assert "boom" in r.stderr


def test_no_launcher_is_exit_125_with_the_fix(tmp_path: Path) -> None:
    assert CLIENT.is_file()
    r = _run([str(CLIENT), "--tenant", "a", "--group", "b", "--", "true"], text=True,
             env=_env(tmp_path / "none.sock"))
    assert r.returncode == 125
    assert f"cannot reach the launcher at {tmp_path / 'none.sock'}" in r.stderr
    assert "governor launcher" in r.stderr


def test_not_root_is_refused(open_server: tuple[Path, subprocess.Popen[str]]) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to run the client as another user")
    sock, _ = open_server
    r = _run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        str(CLIENT), "0"], text=True,
                       env=_env(sock))
    assert r.returncode == 125
    assert "Permission denied (the launcher's socket is root's: run as root)" in r.stderr
    os.chmod(sock, 0o666)  # past the socket's mode: the peer's uid is checked too
    r = _run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        str(CLIENT), "0"], text=True,
                       env=_env(sock))
    assert r.returncode == 125
    assert "only root may launch" in r.stderr
    assert "argv=" not in r.stdout


def _raw(sock: Path, data: bytes, fds: list[int]) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(sock))
        if fds:
            socket.send_fds(s, [data], fds)
        else:
            s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(20)
        out = b""
        while chunk := s.recv(64):
            out += chunk
        return out


@pytest.mark.parametrize("data,fds,why", [
    (b"XXXX" + struct.pack("=I", 8) + struct.pack("=II", 0, 0), 3, "magic"),
    (MAGIC + struct.pack("=I", 64 << 20), 3, "size"),
    (MAGIC + struct.pack("=I", 9) + struct.pack("=II", 1, 0) + b"a", 3, "unterminated"),
    (MAGIC + struct.pack("=I", 8) + struct.pack("=II", 0, 0), 0, "no descriptors"),
    (MAGIC + struct.pack("=I", 100), 3, "truncated"),
])
def test_malformed_requests_are_refused_and_serving_goes_on(
        server: tuple[Path, subprocess.Popen[str]], data: bytes, fds: int, why: str) -> None:
    sock, _ = server
    got = _raw(sock, data, [0, 1, 2][:fds])
    assert got == b"X" + struct.pack("=i", 125), why
    r = _run([str(CLIENT), "3"], env=_env(sock))
    assert r.returncode == 3


def test_doctor_sees_the_launcher_and_a_probe_is_no_request(
        server: tuple[Path, subprocess.Popen[str]], tmp_path: Path) -> None:
    from governor.config import Config
    from governor.doctor import _launcher_check

    sock, _ = server
    c = _launcher_check(Config(launcher_socket=str(sock)))
    assert (c.ok, c.info) == (True, False) and "a launcher serves" in c.detail
    c = _launcher_check(Config(launcher_socket=str(tmp_path / "none.sock")))
    assert c.ok and c.info and "no launcher serves" in c.detail
    assert "governor-launcher" in c.fix
    # the probe (connect, close) was no request: the launcher serves on
    r = _run([str(CLIENT), "4"], env=_env(sock))
    assert r.returncode == 4


def test_parse_body() -> None:
    body = struct.pack("=II", 2, 3) + b"a\0b c\0X=1\0NOEQ\0X=2\0"
    assert parse_body(body) == (["a", "b c"], {"X": "1"})
    with pytest.raises(LauncherError, match="2 strings, not the 2 arguments \\+ 1"):
        parse_body(struct.pack("=II", 2, 1) + b"a\0b\0")


def test_bind_refuses_a_live_socket_and_a_file_replaces_a_stale_one(tmp_path: Path) -> None:
    path = tmp_path / "run" / "l.sock"
    s = bind(str(path))
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(LauncherError, match="another launcher serves it"):
        bind(str(path))
    s.close()  # the socket file stays, nobody listens: left by a launcher that died
    bind(str(path)).close()
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(LauncherError, match="exists and is not a socket"):
        bind(str(f))
    assert f.read_text() == "x"


def test_cached_reads_again_only_on_change_and_keeps_the_error(tmp_path: Path) -> None:
    p = tmp_path / "p.toml"
    p.write_text("1")

    def load(paths: list[str]) -> int:
        text = Path(paths[0]).read_text()
        if not text.isdigit():
            raise GovernorError(f"{paths[0]}: not a number: {text!r}")
        return int(text)

    c = Cached([str(p)], load)
    c.refresh()
    c.refresh()
    assert (c.get(), c.loads) == (1, 1)
    p.write_text("22")
    c.refresh()
    assert (c.get(), c.loads) == (22, 2)
    p.write_text("x")
    c.refresh()
    with pytest.raises(GovernorError, match="not a number"):
        c.get()
    c.refresh(force=True)
    assert c.loads == 4


def test_governor_launcher_parses_as_governor_launch(tmp_path: Path) -> None:
    """The real command: its requests are parsed and checked as ``governor launch``'s
    (usage errors, unknown tenants, the configuration options it refuses)."""
    assert CLIENT.is_file()
    (tmp_path / "pol.toml").write_text('[tenants.acme.groups.web]\nmemory.max = "64M"\n')
    sock = tmp_path / "g.sock"
    (tmp_path / "cfg.toml").write_text(
        f'[governor]\npolicy = "{tmp_path}/pol.toml"\nstate_dir = "{tmp_path}/state"\n'
        f'[launcher]\nsocket = "{sock}"\n')
    p = subprocess.Popen([sys.executable, "-m", "governor", "launcher", "--config",
                          str(tmp_path / "cfg.toml")], stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert p.stderr is not None
        for line in p.stderr:
            if "governor launcher: serving" in line:
                break
        else:
            pytest.fail("the launcher did not start")

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return _run([str(CLIENT), *args], text=True,
                                  env=_env(sock))

        r = run("--", "true")
        assert r.returncode == 2 and "Missing option '--tenant'" in r.stderr
        r = run("--tenant", "nope", "--group", "web", "--", "true")
        assert r.returncode == 2
        assert "governor-launch: error: unknown tenant 'nope'" in r.stderr
        r = run("--tenant", "acme", "--group", "web", "--keep", "--", "true")
        assert r.returncode == 2 and "--keep is for a container of an image" in r.stderr
        r = run("--tenant", "acme", "--group", "web", "--config", "/x", "--", "true")
        assert r.returncode == 2 and "are the launcher's own" in r.stderr
        # a policy made invalid is reported by the next launch, and fixed by the next edit
        (tmp_path / "pol.toml").write_text("[tenants.acme.groups.web]\nmemory.max = -3\n")
        r = run("--tenant", "acme", "--group", "web", "--", "true")
        assert r.returncode == 125 and "memory.max" in r.stderr
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0
    assert not sock.exists()
