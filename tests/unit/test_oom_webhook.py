"""Issue #15 item 14: the OOM webhook's backoff is capped, stop() ends it, no secret logged."""

from __future__ import annotations

import base64
import http.server
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import ClassVar

import pytest

from governor.oom.actions import MAX_BACKOFF, WebhookAlerter, backoff_delay, redact_url


@pytest.mark.parametrize(("attempt", "delay"), [
    (0, 0.5), (1, 1.0), (5, 16.0), (9, 256.0), (10, MAX_BACKOFF),
    # 0.5 * 2**46 s is past threading.TIMEOUT_MAX: the wait raised OverflowError and the
    # worker died; 2**1100 does not even fit a float
    (46, MAX_BACKOFF), (1100, MAX_BACKOFF), (10**9, MAX_BACKOFF), (-1, 0.5)])
def test_webhook_backoff_is_capped_without_overflow(attempt: int, delay: float) -> None:
    assert backoff_delay(0.5, attempt) == delay
    assert backoff_delay(0.5, attempt, cap=60.0) == min(delay, 60.0)


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: connecting is refused


def test_webhook_worker_survives_many_retries() -> None:
    # 60 retries at a 0 s cap: attempt 46 and later used to overflow the wait
    a = WebhookAlerter(f"http://127.0.0.1:{_refused_port()}/x", timeout=0.5, retries=60,
                       backoff=0.5, max_backoff=0.0)
    a.submit({"n": 1})
    a.submit({"n": 2})
    deadline = time.monotonic() + 30
    while a.results["failed"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert a.results == {"failed": 2}
    assert a._thread.is_alive()  # the worker is still there for the next alert
    a.stop()


def test_webhook_stop_interrupts_a_long_backoff(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="governor.oom")
    a = WebhookAlerter(f"http://127.0.0.1:{_refused_port()}/x", timeout=0.5, retries=5,
                       backoff=100.0)
    a.submit({"n": 1})
    deadline = time.monotonic() + 10
    while not any("retrying" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "the first attempt never failed"
        time.sleep(0.01)
    t0 = time.monotonic()
    a.stop(timeout=5.0)  # the 100 s wait ends at once: its retry would come past 5 s
    assert time.monotonic() - t0 < 1.0
    assert not a._thread.is_alive()
    assert a.results == {"failed": 1}
    assert not a.submit({"n": 2}) and a.results["dropped"] == 1  # stopped: not queued


def test_webhook_stop_drops_what_is_left_at_its_deadline() -> None:
    with socket.socket() as silent:  # accepts, never answers: each attempt times out
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        a = WebhookAlerter(f"http://127.0.0.1:{silent.getsockname()[1]}/x", timeout=0.3,
                           retries=0)
        for i in range(20):
            a.submit({"n": i})
        t0 = time.monotonic()
        a.stop(timeout=0.5)
        assert time.monotonic() - t0 < 0.5 + 0.3 + 0.5  # deadline + one attempt + slack
        deadline = time.monotonic() + 5
        while a._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not a._thread.is_alive()
        assert a.results["failed"] + a.results["dropped"] == 20 and a.results["dropped"] > 0


@pytest.mark.parametrize(("url", "shown"), [
    ("https://hooks.example/alert", "https://hooks.example/alert"),
    ("https://user:s3cret@hooks.example:8443/a/b?token=s3cret&team=ops#frag",
     "https://***@hooks.example:8443/a/b?token=***&team=***"),
    ("http://s3cret@[::1]:9/x", "http://***@[::1]:9/x"),
    ("http://h/x?s3cret", "http://h/x?s3cret=***"),
])
def test_webhook_url_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown


class _Auth(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str | None]]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.path, self.headers.get("Authorization")))
        self.send_response(503 if len(self.seen) == 1 else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a: object) -> None:
        pass


@pytest.fixture
def auth_receiver() -> Iterator[tuple[int, type[_Auth]]]:
    class R(_Auth):
        seen: ClassVar[list[tuple[str, str | None]]] = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), R)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield int(srv.server_address[1]), R
    srv.shutdown()
    srv.server_close()


def test_webhook_secrets_never_logged(auth_receiver: tuple[int, type[_Auth]],
                                      caplog: pytest.LogCaptureFixture) -> None:
    port, r = auth_receiver
    caplog.set_level(logging.DEBUG, logger="governor.oom")
    a = WebhookAlerter(f"http://alert:s3cret@127.0.0.1:{port}/hook?key=s3cret", timeout=2,
                       retries=2, backoff=0.01)
    a.submit({"n": 1})  # 503 (logged with the URL), then delivered
    a.stop()
    assert a.results == {"ok": 1}
    # the userinfo went as a Basic header, the query string as it was
    cred = "Basic " + base64.b64encode(b"alert:s3cret").decode()
    assert r.seen == [("/hook?key=s3cret", cred)] * 2
    logged = [(rec.getMessage(), vars(rec)) for rec in caplog.records]
    assert any("retrying" in m for m, _ in logged)
    assert all("s3cret" not in m + repr(v) for m, v in logged)
    assert "s3cret" not in a.url and a.url == f"http://***@127.0.0.1:{port}/hook?key=***"
