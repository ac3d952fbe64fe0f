"""The HTTP endpoint: ``/metrics`` from the latest rendering, ``/healthz``.

A stdlib ``ThreadingHTTPServer`` in a daemon thread.  A scrape never renders: it sends the
bytes :meth:`Exporter.publish` was given by the last sampling pass (gzip when the scraper
sends ``Accept-Encoding: gzip``).  ``/healthz`` answers 200 with a small JSON document
(``"status": "ok"``) while the last publication is younger than ``stale_after`` seconds and
nothing is wrong; 503 with ``"status": "stale"`` when the last publication is older (or
before the first one), and 503 with ``"status": "degraded"`` and the ``"problems"`` (the
database down, failed cgroup writes of the last apply: :meth:`Exporter.set_problems`) while
the governor runs but not fully.  ``/livez`` is the liveness check: 200 while publications
are fresh, degraded or not (restarting the governor does not bring a database back).

Loopback by default (``127.0.0.1:9717``).  TLS (certificate and key files) and basic auth
(a user and the hex SHA-256 of its password, compared in constant time) are both optional
and off unless configured.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from governor.errors import ConfigError
from governor.exporter.render import CONTENT_TYPE, Rendering

log = logging.getLogger("governor.exporter")


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9717"`` / ``"[::1]:9717"`` -> ``(host, port)``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{listen!r} is not HOST:PORT", key="exporter.listen")
    return host.strip("[]"), int(port)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    exporter: Exporter
    tls: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        # the TLS handshake runs here, in the request's own thread, so a slow or broken
        # client never holds up the accept loop
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as e:
                log.debug("tls handshake failed", extra={"client": client_address,
                                                         "error": str(e)})
                return
        super().finish_request(request, client_address)

    def __init__(self, addr: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 family: socket.AddressFamily) -> None:
        self.address_family = family
        super().__init__(addr, handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "governor"
    timeout = 30  # seconds a connection may sit idle

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http " + format, *args)

    def _send(self, code: int, body: bytes, ctype: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorized(self) -> bool:
        exp = self.server.exporter
        if exp.auth_user is None:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, blob = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(blob, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        if not sep:
            return False
        digest = hashlib.sha256(password.encode()).hexdigest()
        # both compared in constant time, and both always compared
        ok_user = hmac.compare_digest(user.encode(), exp.auth_user.encode())
        ok_pass = hmac.compare_digest(digest, exp.auth_sha256 or "")
        return ok_user and ok_pass

    def do_GET(self) -> None:
        exp = self.server.exporter
        if not self._authorized():
            self._send(401, b"unauthorized\n", "text/plain; charset=utf-8",
                       {"WWW-Authenticate": 'Basic realm="governor"'})
            return
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            r = exp.current
            exp.scrapes += 1  # counted before the reply: a client that has it sees the count
            gz = "gzip" in self.headers.get("Accept-Encoding", "")
            if gz:
                self._send(200, r.gzipped(), CONTENT_TYPE,
                           {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
            else:
                self._send(200, r.body, CONTENT_TYPE, {"Vary": "Accept-Encoding"})
        elif path in ("/healthz", "/livez"):
            ok, doc = exp.health()
            if path == "/livez":
                ok = doc["status"] != "stale"
            self._send(200 if ok else 503, json.dumps(doc, sort_keys=True).encode() + b"\n",
                       "application/json")
        elif path == "/":
            self._send(200, b'<html><body><a href="/metrics">metrics</a> '
                            b'<a href="/healthz">healthz</a> '
                            b'<a href="/livez">livez</a></body></html>\n',
                       "text/html; charset=utf-8")
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    do_HEAD = do_GET


class Exporter:
    """``/metrics`` and ``/healthz`` on ``listen`` (port 0: any free port, see :attr:`port`).

    ``publish(body)`` swaps in a new rendering atomically (one reference assignment);
    requests being served keep the one they started with.
    """

    def __init__(self, listen: str = "127.0.0.1:9717", *, tls_cert: str | None = None,
                 tls_key: str | None = None, auth_user: str | None = None,
                 auth_sha256: str | None = None, stale_after: float = 60.0) -> None:
        self.host, self._port = parse_listen(listen)
        if bool(tls_cert) != bool(tls_key):
            raise ConfigError("give both exporter.tls_cert and exporter.tls_key, or neither")
        if bool(auth_user) != bool(auth_sha256):
            raise ConfigError("give both exporter.basic_auth_user and "
                              "exporter.basic_auth_password_sha256, or neither")
        if auth_sha256 is not None and (len(auth_sha256) != 64 or not all(
                c in "0123456789abcdefABCDEF" for c in auth_sha256)):
            raise ConfigError("not the hex SHA-256 of a password (64 hex digits); make it "
                              "with: printf %s 'PASSWORD' | sha256sum",
                              key="exporter.basic_auth_password_sha256")
        self.tls_cert = tls_cert or None
        self.tls_key = tls_key or None
        self.auth_user = auth_user or None
        self.auth_sha256 = auth_sha256.lower() if auth_sha256 else None
        self.stale_after = stale_after
        self.current = Rendering(b"")
        self.published_at: float | None = None  # monotonic time of the last publish
        self.publications = 0
        self.scrapes = 0
        #: what keeps the governor from being fully healthy while it runs (empty: nothing)
        self.problems: tuple[str, ...] = ()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, cfg: Any, *, stale_after: float | None = None) -> Exporter:
        """From a :class:`~governor.config.Config` (stale after three sampling intervals)."""
        return cls(cfg.listen, tls_cert=cfg.tls_cert, tls_key=cfg.tls_key,
                   auth_user=cfg.basic_auth_user, auth_sha256=cfg.basic_auth_password_sha256,
                   stale_after=stale_after if stale_after is not None
                   else max(3 * cfg.sample_interval, 30.0))

    @property
    def port(self) -> int:
        if self._server is not None:
            return int(self._server.server_address[1])
        return self._port

    @property
    def url(self) -> str:
        scheme = "https" if self.tls_cert else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def publish(self, body: bytes, *, created: float | None = None) -> None:
        """Serve ``body`` (one rendering) from now on."""
        self.current = Rendering(body, created if created is not None else time.time())
        self.published_at = time.monotonic()
        self.publications += 1

    def set_problems(self, problems: list[str] | tuple[str, ...]) -> None:
        """What ``/healthz`` reports as degraded from now on (empty: healthy)."""
        self.problems = tuple(problems)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """``(healthy, document)``: status "ok", "stale" or "degraded" (see the module)."""
        age = None if self.published_at is None else time.monotonic() - self.published_at
        fresh = age is not None and age <= self.stale_after
        problems = self.problems
        status = "stale" if not fresh else "degraded" if problems else "ok"
        return status == "ok", {
            "status": status, "problems": list(problems),
            "last_sample_age_seconds": None if age is None else round(age, 3),
            "last_sample_unix": self.current.created,
            "stale_after_seconds": self.stale_after,
            "publications": self.publications}

    def start(self) -> None:
        if self._server is not None:
            return
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            srv = _Server((self.host, self._port), _Handler, family)
        except OSError as e:
            raise ConfigError(f"cannot listen on {self.host}:{self._port}: {e.strerror}",
                              key="exporter.listen") from e
        srv.exporter = self
        if self.tls_cert and self.tls_key:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                ctx.load_cert_chain(self.tls_cert, self.tls_key)
            except (OSError, ssl.SSLError) as e:
                srv.server_close()
                raise ConfigError(f"cannot load TLS certificate/key: {e}",
                                  key="exporter.tls_cert") from e
            srv.tls = ctx
        self._server = srv
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="governor-exporter", daemon=True)
        self._thread.start()
        log.info("exporter listening", extra={"url": self.url})

    def stop(self) -> None:
        srv, self._server = self._server, None
        if srv is None:
            return
        srv.shutdown()
        srv.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
