"""The HTTP endpoint: ``/metrics`` from the latest rendering, ``/healthz``.

A stdlib ``ThreadingHTTPServer`` in a daemon thread.  A scrape never renders the groups: it
sends the bytes :meth:`Exporter.publish` was given by the last sampling pass (gzip when the
scraper sends ``Accept-Encoding: gzip``), then the governor process's own few families,
made at each scrape by prometheus-client (:mod:`governor.exporter.process`: ``process_*``,
``python_info``, ``governor_build_info``, ``governor_policy_info`` from
:meth:`Exporter.set_policy`) when it is given them (``own``; the daemon is).

``/healthz`` answers 200 with a small JSON document (``"status": "ok"``) while the last
publication is younger than ``stale_after`` seconds and nothing is wrong; 503 with
``"status": "stale"`` when the last publication is older (or before the first one), and 503
with ``"status": "degraded"`` and the ``"problems"`` (the database down, failed cgroup
writes of the last apply: :meth:`Exporter.set_problems`) while the governor runs but not
fully.  ``/livez`` is the liveness check: 200 while publications are fresh, degraded or not
(restarting the governor does not bring a database back).

Loopback by default (``127.0.0.1:9717``).  TLS and basic auth are optional and off unless
configured: ``[exporter] web_config_file`` names a Prometheus web configuration file
(:mod:`governor.exporter.webconfig`: TLS with optional client certificates, bcrypt users,
extra headers), as every Prometheus exporter takes it.  The older ``tls_cert``/``tls_key``
settings still work; ``basic_auth_user`` with ``basic_auth_password_sha256`` (an unsalted
SHA-256) still works for this release with a warning at start (docs/operations.md: how to
move to a bcrypt hash).

A slow or hostile client cannot stop the scrapes (issue #15): the TLS handshake runs in the
connection's own thread with a deadline (``request_timeout``), each request (reading it and
writing the answer) has the same deadline, enforced by the accept loop, which shuts down a
connection past it; and at most ``max_connections`` connections are served at once, one more
is answered 503 (plain HTTP) or closed (TLS) at once.  A malformed or non-ASCII
``Authorization`` header is a 401.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from governor.errors import ConfigError
from governor.exporter.accept import QuietHTTPServer
from governor.exporter.compress import gzip_member
from governor.exporter.process import OwnMetrics
from governor.exporter.render import CONTENT_TYPE, Rendering
from governor.exporter.webconfig import Authenticator, WebConfig, load_web_config

log = logging.getLogger("governor.exporter")


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9717"`` / ``"[::1]:9717"`` -> ``(host, port)``."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{listen!r} is not HOST:PORT", key="exporter.listen")
    return host.strip("[]"), int(port)


#: seconds a client has for the TLS handshake and for each request (read and answer)
REQUEST_TIMEOUT = 10.0
#: connections served at once; one more is refused at once
MAX_CONNECTIONS = 64
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Content-Length: 23\r\nConnection: close\r\n\r\ntoo many connections, retry\n")


class _Server(QuietHTTPServer):
    daemon_threads = True
    block_on_close = False
    exporter: Exporter
    tls: ssl.SSLContext | None = None

    def __init__(self, addr: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 family: socket.AddressFamily, *, request_timeout: float,
                 max_connections: int) -> None:
        self.address_family = family
        self._slots = threading.BoundedSemaphore(max_connections)
        self.refused = 0     # connections over max_connections
        self._refused_logged = 0.0
        super().__init__(addr, handler, request_timeout=request_timeout)

    # -- the connection cap ---------------------------------------------------------------
    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            now = time.monotonic()
            if now - self._refused_logged > 60:
                self._refused_logged = now
                log.warning("exporter connection refused: too many connections",
                            extra={"client": client_address[0], "refused": self.refused})
            if self.tls is None:
                with contextlib.suppress(OSError):
                    request.setblocking(False)
                    request.send(_BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(self.request_timeout)
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        # the TLS handshake runs here, in the connection's own thread and within the
        # deadline: a client that connects and never sends its ClientHello holds this
        # thread (and a connection slot) for request_timeout at most
        try:
            tls_sock = self.tls.wrap_socket(request, server_side=True,
                                            do_handshake_on_connect=False)
        except (OSError, ssl.SSLError) as e:
            log.debug("tls failed", extra={"client": client_address[0], "error": str(e)})
            return
        try:
            self.watch(tls_sock)
            try:
                tls_sock.do_handshake()
            except (OSError, ssl.SSLError) as e:  # TimeoutError is an OSError
                log.debug("tls handshake failed", extra={"client": client_address[0],
                                                         "error": str(e)})
                return
            finally:
                self.unwatch(tls_sock)
            super().finish_request(tls_sock, client_address)
        finally:
            with contextlib.suppress(OSError):
                tls_sock.close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "governor"
    timeout = None  # the server sets request_timeout on the socket

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http " + format, *args)

    def handle_one_request(self) -> None:
        # reading the request and writing the answer: within request_timeout, in all (a
        # socket timeout alone restarts at each byte a slow client trickles in)
        self.server.watch(self.connection)
        try:
            super().handle_one_request()
        finally:
            self.server.unwatch(self.connection)

    def _send(self, code: int, body: bytes, ctype: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in {**self.server.exporter.headers, **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorized(self) -> bool:
        return self.server.exporter.auth.check(self.headers.get("Authorization"))

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
            try:  # the pass's snapshot is rendered by the first scrape that asks for it
                body = r.gzipped() if gz else r.body
                # then the process's own families, made now: a second gzip member (RFC
                # 1952 2.2: a gzip file is a series of members; Go's and Python's readers
                # read them all), so the pass's gzip copy is never made again
                if exp.own is not None:
                    own = exp.own.exposition()
                    body += gzip_member(own) if gz else own
            except Exception:
                log.exception("rendering the metrics failed")
                self._send(500, b"rendering the metrics failed (see the daemon's log)\n",
                           "text/plain; charset=utf-8")
                return
            if gz:
                self._send(200, body, CONTENT_TYPE,
                           {"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
            else:
                self._send(200, body, CONTENT_TYPE, {"Vary": "Accept-Encoding"})
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
                 auth_sha256: str | None = None, stale_after: float = 60.0,
                 web_config: WebConfig | None = None,
                 request_timeout: float = REQUEST_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS,
                 own: OwnMetrics | None = None) -> None:
        self.host, self._port = parse_listen(listen)
        if bool(tls_cert) != bool(tls_key):
            raise ConfigError("give both exporter.tls_cert and exporter.tls_key, or neither")
        if bool(auth_user) != bool(auth_sha256):
            raise ConfigError("give both exporter.basic_auth_user and "
                              "exporter.basic_auth_password_sha256, or neither")
        if auth_sha256 is not None and (len(auth_sha256) != 64 or not all(
                c in "0123456789abcdefABCDEF" for c in auth_sha256)):
            raise ConfigError("not the hex SHA-256 of a password (64 hex digits); better, "
                              "move to a bcrypt hash in exporter.web_config_file "
                              "(docs/operations.md)", key="exporter.basic_auth_password_sha256")
        wc = web_config or WebConfig()
        if wc.tls and tls_cert:
            raise ConfigError("TLS is set twice: in exporter.tls_cert/tls_key and in the web "
                              "configuration file's tls_server_config; keep one",
                              key="exporter.web_config_file")
        if wc.users and auth_user:
            raise ConfigError("basic auth is set twice: exporter.basic_auth_user and the web "
                              "configuration file's basic_auth_users; keep the file's",
                              key="exporter.basic_auth_user")
        if not request_timeout > 0 or max_connections < 1:
            raise ConfigError("request_timeout must be positive, max_connections at least 1",
                              key="exporter")
        if tls_cert and tls_key:
            wc.cert_file, wc.key_file = tls_cert, tls_key
        self.web_config = wc
        self.tls_cert = wc.cert_file
        self.tls_key = wc.key_file
        self.auth = Authenticator(wc.users, legacy_user=auth_user or None,
                                  legacy_sha256=auth_sha256 or None)
        self.auth_user = auth_user or None
        self.headers = dict(wc.headers)
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.stale_after = stale_after
        self.current = Rendering(b"")
        self.published_at: float | None = None  # monotonic time of the last publish
        self.publications = 0
        self.scrapes = 0
        #: what keeps the governor from being fully healthy while it runs (empty: nothing)
        self.problems: tuple[str, ...] = ()
        #: process_*, python_info, governor_build_info, governor_policy_info: made at
        #: each scrape and served after the pass's rendering (None: only what is published)
        self.own = own
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, cfg: Any, *, stale_after: float | None = None,
                    own_metrics: bool = False) -> Exporter:
        """From a :class:`~governor.config.Config` (stale after three sampling intervals);
        ``own_metrics``: serve this process's own families too (the daemon does)."""
        wc = load_web_config(cfg.web_config_file) if cfg.web_config_file else None
        if cfg.basic_auth_user:
            log.warning("exporter.basic_auth_password_sha256 is deprecated (an unsalted "
                        "SHA-256) and goes in the next release: put the user with a bcrypt "
                        "hash in a web configuration file (exporter.web_config_file, "
                        "basic_auth_users; docs/operations.md)")
        return cls(cfg.listen, tls_cert=cfg.tls_cert, tls_key=cfg.tls_key,
                   auth_user=cfg.basic_auth_user, auth_sha256=cfg.basic_auth_password_sha256,
                   web_config=wc, request_timeout=cfg.exporter_request_timeout,
                   max_connections=cfg.exporter_max_connections,
                   own=OwnMetrics(node=cfg.node) if own_metrics else None,
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

    def publish(self, body: bytes | Callable[[], bytes], *, created: float | None = None
                ) -> None:
        """Serve ``body`` from now on: the exposition, or a function rendering it on the
        first scrape (see :class:`~governor.exporter.render.Rendering`)."""
        self.current = Rendering(body, created if created is not None else time.time())
        self.published_at = time.monotonic()
        self.publications += 1

    def set_policy(self, digest: str | None) -> None:
        """The digest of the policy in force from now on (``governor_policy_info``; None:
        none loaded)."""
        if self.own is not None:
            self.own.policy_digest = digest

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

    def dropped(self) -> dict[str, int]:
        """Connections the server cut, by reason, since it started: ``over_limit`` (one more
        than max_connections, refused at once) and ``timeout`` (a handshake or request not
        done within request_timeout); both always, 0 included, so that ``increase()`` sees
        the first one."""
        srv = self._server
        if srv is None:
            return {}
        return {"over_limit": srv.refused, "timeout": srv.timed_out}

    def start(self) -> None:
        if self._server is not None:
            return
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        tls = self.web_config.ssl_context() if self.web_config.tls else None
        try:
            srv = _Server((self.host, self._port), _Handler, family,
                          request_timeout=self.request_timeout,
                          max_connections=self.max_connections)
        except OSError as e:
            raise ConfigError(f"cannot listen on {self.host}:{self._port}: {e.strerror}",
                              key="exporter.listen") from e
        srv.exporter = self
        srv.tls = tls
        self._server = srv
        self._thread = threading.Thread(target=srv.serve_forever, name="governor-exporter",
                                        daemon=True)
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
