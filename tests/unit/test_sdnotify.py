"""governor.sdnotify against real AF_UNIX datagram sockets (a path in tmp_path, and an
abstract name), as systemd's own notification socket receives them."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from governor.sdnotify import Notifier, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(5)
    try:
        yield s, str(path)
    finally:
        s.close()


def test_ready_and_status_in_one_datagram(listener: tuple[socket.socket, str]) -> None:
    s, path = listener
    n = Notifier(path)
    assert n.enabled
    assert n.notify("READY=1", "STATUS=running: 2 tenants")
    assert s.recv(4096) == b"READY=1\nSTATUS=running: 2 tenants"
    assert n.notify("WATCHDOG=1") and s.recv(4096) == b"WATCHDOG=1"
    assert n.sent == 2


def test_abstract_socket_name() -> None:
    name = f"governor-test-{secrets.token_hex(6)}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(5)
    try:
        assert Notifier("@" + name).notify("STOPPING=1")
        assert s.recv(4096) == b"STOPPING=1"
    finally:
        s.close()


def test_from_environment(listener: tuple[socket.socket, str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    s, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert Notifier().notify("RELOADING=1") and s.recv(4096) == b"RELOADING=1"


def test_no_socket_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled and not n.notify("READY=1") and n.sent == 0


def test_a_missing_socket_is_logged_once_not_raised(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier(str(tmp_path / "gone.sock"))
    assert not n.notify("WATCHDOG=1") and not n.notify("WATCHDOG=1")
    assert [r.getMessage() for r in caplog.records].count("sd_notify failed") == 1


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    assert watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))   # meant for another process
    assert watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert watchdog_interval() is None
