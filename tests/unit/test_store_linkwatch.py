"""The dead-link backstop (governor/store/linkwatch.py): a connection whose socket heard
nothing from the server for ``stall`` seconds, or whose queued bytes got no further for as
long while acknowledgements still came in, is cut; the statement waiting on it fails at
once as a lost connection, and live or closed sockets are never touched.  The blackholed
route itself is in the VM: tests/kernel/test_fleet_kernel.py."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from governor.store.db import upgrade
from governor.store.gate import Database
from governor.store.linkwatch import STALL, LinkWatch, tcp_state
from tests.helpers.db import _pg_server_url, throwaway_database


class _Conn:
    """What the engine's "connect" event hands over: here, a bare socket's holder."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    srv = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(srv.getsockname())
    peer, _ = srv.accept()
    srv.close()
    yield client, peer
    client.close()
    peer.close()


def _watch(stall: float) -> LinkWatch:
    engine = create_engine("sqlite://")
    return LinkWatch(engine, shown="test", stall=stall, every=3600.0,
                     socket_of=lambda c: c.sock.fileno())


def test_last_ack_is_read_from_tcp_info(pair: tuple[socket.socket, socket.socket]) -> None:
    client, _peer = pair
    client.sendall(b"x")
    time.sleep(0.2)
    state = tcp_state(client.fileno())
    assert state is not None and 150 <= state.last_ack_ms < 5000
    with socket.socket() as unconnected:
        assert tcp_state(unconnected.fileno()) is None


def test_silent_link_cut_wakes_the_waiting_reader(
        pair: tuple[socket.socket, socket.socket], caplog: pytest.LogCaptureFixture) -> None:
    client, _peer = pair
    client.sendall(b"query")       # acknowledged; the "server" then says nothing
    watch = _watch(stall=0.1)
    try:
        conn = _Conn(client)
        watch._connected(conn, None)
        got: list[tuple[bytes, int]] = []
        # what the woken reader sees: the cut already counted (the daemon's pass and the
        # kernel test look at the count once their statement fails)
        reader = threading.Thread(target=lambda: got.append((client.recv(10), watch.cuts)))
        reader.start()
        time.sleep(0.3)
        assert reader.is_alive()            # blocked, as libpq's wait would be
        with caplog.at_level(logging.WARNING, logger="governor.store"):
            assert watch.check() == 1
        reader.join(5)
        assert not reader.is_alive() and got == [(b"", 1)]   # woken: the connection is over
        assert watch.cuts == 1 and watch.check() == 0   # cut once, logged once
        assert [r.msg for r in caplog.records] == ["database link dead: connection cut"]
        assert caplog.records[0].__dict__["database"] == "test"
    finally:
        watch.stop()


def _fill(client: socket.socket) -> tuple[threading.Thread, list[BaseException]]:
    """A writer thread that sends until the peer's receive buffer and our send buffer are
    full and blocks there (as libpq's flush would), once the peer acknowledges nothing
    more (its window shut); the errors its send ends with."""
    errors: list[BaseException] = []

    def write() -> None:
        try:
            client.sendall(b"x" * 16_000_000)
        except OSError as e:
            errors.append(e)

    writer = threading.Thread(target=write)
    writer.start()
    last = -1
    for _ in range(100):
        time.sleep(0.2)
        state = tcp_state(client.fileno())
        assert state is not None and state.acked is not None
        if state.acked == last and state.queued > 0:
            return writer, errors
        last = state.acked
    raise AssertionError("the peer kept taking bytes")


def test_bytes_that_get_no_further_are_cut_though_acks_come_in(
        pair: tuple[socket.socket, socket.socket], caplog: pytest.LogCaptureFixture) -> None:
    """The state the VM probe found under a blackholed route: our bytes wait in the send
    queue while acknowledgements still come in now and then (here a peer that reads
    nothing, its window shut, answering the kernel's window probes), so the "silent" rule
    may not hold (switched off here); no byte more acknowledged for ``stuck`` seconds cuts
    the link, and the writer blocked on it is woken."""
    client, _peer = pair
    writer, errors = _fill(client)
    watch = LinkWatch(create_engine("sqlite://"), shown="test", stall=3600.0, stuck=0.8,
                      every=3600.0, socket_of=lambda c: c.sock.fileno())
    try:
        conn = _Conn(client)                  # held: the watch keeps connections weakly
        watch._connected(conn, None)
        assert watch.check() == 0             # first look: the wait starts now
        time.sleep(0.5)
        assert watch.check() == 0             # waiting, not yet for 0.8 s
        time.sleep(0.5)
        with caplog.at_level(logging.WARNING, logger="governor.store"):
            assert watch.check() == 1
        writer.join(5)
        assert not writer.is_alive() and len(errors) == 1   # woken with an error
        rec = caplog.records[-1]
        assert rec.msg == "database link dead: connection cut"
        assert rec.__dict__["queued_bytes"] > 0 and rec.__dict__["stuck_s"] >= 0.8
        assert rec.__dict__["silent_s"] < 3600
    finally:
        watch.stop()


def test_a_slow_reader_is_not_cut(pair: tuple[socket.socket, socket.socket]) -> None:
    """Queued bytes that are taken, however slowly, are no stall: each look that sees more
    acknowledged starts the wait again."""
    client, peer = pair
    writer, errors = _fill(client)
    watch = LinkWatch(create_engine("sqlite://"), shown="test", stall=3600.0, stuck=0.5,
                      every=3600.0, socket_of=lambda c: c.sock.fileno())
    try:
        conn = _Conn(client)
        watch._connected(conn, None)
        assert len(watch._links) == 1
        for _ in range(6):
            assert watch.check() == 0
            peer.recv(262144)     # some taken each time: the window opens again
            time.sleep(0.3)
        state = tcp_state(client.fileno())
        assert state is not None and state.queued > 0   # still waiting, still moving
        assert watch.check() == 0 and watch.cuts == 0
        assert writer.is_alive() and not errors       # still writing, never cut
    finally:
        watch.stop()
        client.shutdown(socket.SHUT_RDWR)   # ends the writer
        writer.join(5)
        assert not writer.is_alive()


def test_live_link_is_left_alone(pair: tuple[socket.socket, socket.socket]) -> None:
    client, peer = pair
    client.sendall(b"q")
    peer.sendall(b"a")
    watch = _watch(stall=STALL)
    try:
        conn = _Conn(client)
        watch._connected(conn, None)
        assert len(watch._links) == 1      # watched, and heard from within STALL
        assert watch.check() == 0 and watch.cuts == 0
        client.sendall(b"still here")
        assert peer.recv(100).endswith(b"still here")
    finally:
        watch.stop()


def test_a_closed_socket_whose_number_was_reused_is_not_touched() -> None:
    watch = _watch(stall=0.0)
    srv = socket.create_server(("127.0.0.1", 0))
    try:
        first = socket.create_connection(srv.getsockname())
        a, _ = srv.accept()
        conn = _Conn(first)
        watch._connected(conn, None)
        assert len(watch._links) == 1
        fd = first.fileno()
        first.close()
        # another connection takes the same descriptor number
        other = socket.create_connection(srv.getsockname())
        b, _ = srv.accept()
        if other.fileno() != fd:
            os.dup2(other.fileno(), fd)
            other.close()
            other = socket.socket(fileno=fd)
        assert watch.check() == 0
        other.sendall(b"fine")
        assert b.recv(10) == b"fine"
        other.close()
        a.close()
        b.close()
        del conn
    finally:
        srv.close()
        watch.stop()


def test_postgresql_statement_waiting_on_a_silent_server_fails_as_a_lost_connection(
        tmp_path: Any) -> None:
    """The daemon's own Database: a statement the server answers only after 20 s (nothing
    on the link meanwhile, like a dead route) fails when the watch cuts the link, as a
    lost connection (so the pass spools); the next check reconnects."""
    with throwaway_database(_pg_server_url(), prefix="gov_t") as url:
        upgrade(url)
        db = Database(url)
        try:
            assert db.check() and db.link_watch is not None
            db.link_watch.stall_ms = 1000
            errors: list[BaseException] = []

            def wait_for_server() -> None:
                try:
                    with db.scope() as c:
                        c.execute(text("SELECT pg_sleep(20)"))
                except BaseException as e:
                    errors.append(e)

            t0 = time.monotonic()
            waiter = threading.Thread(target=wait_for_server)
            waiter.start()
            time.sleep(2.0)
            assert db.link_watch.check() == 1
            waiter.join(10)
            took = time.monotonic() - t0
            assert not waiter.is_alive() and took < 6, took
            assert len(errors) == 1 and isinstance(errors[0], DBAPIError)
            assert errors[0].connection_invalidated
            with db.scope() as c:        # the pool's next connection is a fresh one
                assert c.execute(text("SELECT 1")).scalar_one() == 1
        finally:
            db.dispose()
