"""The guest-to-host forward of the sandbox: the QEMU options it becomes, the addresses it
refuses, and the relay QEMU runs per connection (a real TCP server and real pipes)."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from governor.sandbox.errors import SandboxError
from governor.sandbox.qemu import BootSpec, check_host_forward, qemu_argv
from governor.sandbox.relay import relay


def spec(**kw: object) -> BootSpec:
    return BootSpec(qemu="/usr/bin/qemu-system-x86_64", vmlinux=Path("/c/vmlinux"),
                    initramfs=Path("/c/initramfs.img"), workdir=Path("/tmp/w"), **kw)  # type: ignore[arg-type]


def test_host_forwards_become_guestfwd_rules_on_a_restricted_network() -> None:
    argv = qemu_argv(spec(host_forwards=(("10.0.2.101", 5432, 5433),
                                         ("10.0.2.102", 5432, 5433)),
                          python="/opt/py,1/bin/python"))
    netdev = argv[argv.index("-netdev") + 1]
    relay_py = Path(__file__).resolve().parents[2] / "governor/sandbox/relay.py"
    assert netdev.startswith("user,id=n0,restrict=on,guestfwd=tcp:10.0.2.101:5432-cmd:")
    # the comma in the interpreter's path doubled: one option, not two
    assert f"-cmd:/opt/py,,1/bin/python {relay_py} 127.0.0.1 5433," in netdev
    assert netdev.endswith(f",guestfwd=tcp:10.0.2.102:5432-cmd:/opt/py,,1/bin/python "
                           f"{relay_py} 127.0.0.1 5433")
    assert "virtio-net-pci,netdev=n0" in argv
    # no forwards: no network device at all
    assert "-netdev" not in qemu_argv(spec())


@pytest.mark.parametrize(("addr", "gport", "hport", "match"), [
    ("10.0.2.15", 5432, 5433, r"\.15 \(the guest\)"),
    ("10.0.2.2", 5432, 5433, "gateway"),
    ("192.168.1.5", 5432, 5433, "10.0.2.0/24"),
    ("db.example", 5432, 5433, "an IPv4 address"),
    ("10.0.2.100", 0, 5433, "ports are 1..65535"),
    ("10.0.2.100", 5432, 70000, "ports are 1..65535"),
])
def test_bad_host_forwards_are_refused_with_what_would_be_right(
        addr: str, gport: int, hport: int, match: str) -> None:
    with pytest.raises(SandboxError, match=match):
        check_host_forward(addr, gport, hport)


def test_cli_parses_and_rejects_forward_specs() -> None:
    import click

    from governor.sandbox.cli import _host_forward

    assert _host_forward("10.0.2.101:5432:5433") == ("10.0.2.101", 5432, 5433)
    with pytest.raises(click.BadParameter, match="ADDR:PORT:HOSTPORT"):
        _host_forward("10.0.2.101:5432")


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data.upper())

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, t


def test_relay_copies_both_ways_and_passes_the_half_close_on() -> None:
    srv, t = _echo_server()
    port = srv.getsockname()[1]
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    result: list[int] = []
    th = threading.Thread(target=lambda: result.append(relay("127.0.0.1", port, in_r, out_w)))
    th.start()
    payload = b"select 1;" * 20000   # 180 kB: several chunks each way
    writer = threading.Thread(target=lambda: (os.write(in_w, payload), os.close(in_w)))
    writer.start()
    got = b""
    deadline = time.monotonic() + 30
    while len(got) < len(payload) and time.monotonic() < deadline:
        ready, _, _ = select.select([out_r], [], [], 1)
        if ready:
            got += os.read(out_r, 65536)
    writer.join(10)
    th.join(10)
    assert got == payload.upper()
    assert result == [0]
    for fd in (in_r, out_r, out_w):
        os.close(fd)
    srv.close()
    t.join(5)


def test_relay_to_a_closed_port_says_so_and_exits_1() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([sys.executable, "-m", "governor.sandbox.relay", "127.0.0.1", str(port)],
                       input=b"", capture_output=True, timeout=30, check=False)
    assert r.returncode == 1
    assert f"cannot connect to 127.0.0.1:{port}" in r.stderr.decode()
    r = subprocess.run([sys.executable, "-m", "governor.sandbox.relay", "x"],
                       capture_output=True, timeout=30, check=False)
    assert r.returncode == 2 and b"usage" in r.stderr
