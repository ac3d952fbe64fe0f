"""Issue #15 items 12 and 13: the exporter endpoint against slow and hostile clients
(handshake and request deadlines, the connection cap), malformed Authorization headers, and
the Prometheus web configuration file (TLS, client certificates, bcrypt users, headers)."""

from __future__ import annotations

import base64
import hashlib
import logging
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from governor.config import load_config
from governor.errors import ConfigError
from governor.exporter.render import Health, Snapshot, render
from governor.exporter.server import Exporter
from governor.exporter.webconfig import credentials, load_web_config
from tests.helpers.exposition import parsed_samples
from tests.unit.test_exporter_server import get


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _openssl() -> str:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed")
    return openssl


def make_cert(dirpath: Path, name: str, cn: str = "localhost") -> tuple[Path, Path]:
    cert, key = dirpath / f"{name}.crt", dirpath / f"{name}.key"
    subprocess.run([_openssl(), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={cn}", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    make_cert(d, "server")
    make_cert(d, "client", cn="prometheus")
    return d


def _eof_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``sock`` (None: still open after ``seconds``)."""
    t0 = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return None
    except OSError:
        pass  # reset: closed too
    return time.monotonic() - t0


def _scrape_ok_within(url: str, seconds: float, **kw: object) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if get(url, **kw)[0] == 200:  # type: ignore[arg-type]
                return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    return False


# -- item 12: deadlines and the connection cap ------------------------------------------

@pytest.fixture
def tls_exporter(certs: Path) -> Iterator[Exporter]:
    exp = Exporter("127.0.0.1:0", tls_cert=str(certs / "server.crt"),
                   tls_key=str(certs / "server.key"), request_timeout=1.0, max_connections=8)
    exp.start()
    exp.publish(b"up 1\n")
    yield exp
    exp.stop()


def test_stalled_tls_handshake_is_closed_at_its_deadline(tls_exporter: Exporter) -> None:
    # connects and never sends a ClientHello: it used to hold its thread forever
    with socket.create_connection(("127.0.0.1", tls_exporter.port)) as s:
        took = _eof_within(s, 10.0)
    assert took is not None, "the server never closed a stalled TLS handshake"
    assert took < 1.0 + 3.0  # request_timeout, plus the accept loop's tick, plus slack


def test_stalled_handshakes_and_idle_connections_do_not_stop_scrapes(certs: Path) -> None:
    exp = Exporter("127.0.0.1:0", tls_cert=str(certs / "server.crt"),
                   tls_key=str(certs / "server.key"), request_timeout=30.0, max_connections=8)
    exp.start()
    exp.publish(b"up 1\n")
    idle = [socket.create_connection(("127.0.0.1", exp.port)) for _ in range(6)]
    try:
        ctx = ssl.create_default_context(cafile=str(certs / "server.crt"))
        t0 = time.monotonic()
        assert get(exp.url + "/metrics", context=ctx)[:3:2] == (200, b"up 1\n")
        assert time.monotonic() - t0 < 5.0
    finally:
        for s in idle:
            s.close()
        exp.stop()


def test_connections_over_the_cap_are_refused_at_once() -> None:
    exp = Exporter("127.0.0.1:0", request_timeout=30.0, max_connections=3)
    exp.start()
    exp.publish(b"up 1\n")
    idle = [socket.create_connection(("127.0.0.1", exp.port)) for _ in range(3)]
    try:
        # each idle one holds a slot (the accept loop has seen it once a 4th is refused)
        with socket.create_connection(("127.0.0.1", exp.port)) as extra:
            extra.settimeout(10)
            answer = b""
            while chunk := extra.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 503 ") and b"too many connections" in answer
        assert exp._server is not None and exp._server.refused >= 1
        assert exp.dropped()["over_limit"] == exp._server.refused  # -> the metric below
        text = render(Snapshot(node="n", groups={},
                               health=Health(exporter_dropped=exp.dropped()))).decode()
        assert parsed_samples(text)[("governor_exporter_connections_dropped_total",
                                     (("node", "n"), ("reason", "over_limit")))] >= 1
        idle.pop().close()  # a slot comes free: scrapes work again
        assert _scrape_ok_within(exp.url + "/metrics", 10.0)
    finally:
        for s in idle:
            s.close()
        exp.stop()


def test_slowly_trickled_request_is_cut_at_its_deadline() -> None:
    exp = Exporter("127.0.0.1:0", request_timeout=1.0)
    exp.start()
    try:
        with socket.create_connection(("127.0.0.1", exp.port)) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            t0 = time.monotonic()
            closed = False
            s.settimeout(0.3)
            # one header byte every 0.3 s: each read succeeds, so a per-read timeout alone
            # never fires; the request's own deadline must
            while time.monotonic() - t0 < 10 and not closed:
                try:
                    s.sendall(b"X")
                    closed = s.recv(4096) == b""
                except TimeoutError:
                    continue
                except OSError:
                    closed = True
            assert closed and time.monotonic() - t0 < 1.0 + 3.0
        assert get(exp.url + "/livez")[0] == 503  # and it goes on answering (stale: 503)
    finally:
        exp.stop()


def test_request_timeout_and_max_connections_in_the_config(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[exporter]\nrequest_timeout = "3s"\nmax_connections = 5\n')
    cfg = load_config(p, environ={})
    exp = Exporter.from_config(cfg)
    assert (exp.request_timeout, exp.max_connections) == (3.0, 5)
    p.write_text("[exporter]\nmax_connections = 0\n")
    with pytest.raises(ConfigError, match="max_connections"):
        load_config(p, environ={})


# -- item 13: Authorization headers never raise; bcrypt users; the web config file ------

BAD_HEADERS = [
    "Basic \u00e9\u00e9\u00e9",                                      # non-ASCII (latin-1)
    "Basic !!!",                                                     # not base64
    "Basic " + base64.b64encode(b"\xff\xfe:pw").decode(),            # not UTF-8
    "Basic " + base64.b64encode(b"no-colon").decode(),
    "Basic",
    "Bearer abc",
    "",
]


@pytest.mark.parametrize("header", BAD_HEADERS)
def test_malformed_authorization_header_is_401_never_an_error(header: str) -> None:
    assert credentials(header) is None
    digest = hashlib.sha256(b"s3cret").hexdigest()
    exp = Exporter("127.0.0.1:0", auth_user="prom", auth_sha256=digest)
    exp.start()
    try:
        # a raw request: the bytes exactly as a hostile client sends them
        with socket.create_connection(("127.0.0.1", exp.port), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: "
                      + header.encode("latin-1") + b"\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:80]
        # and the server goes on serving
        assert get(exp.url + "/metrics", basic("prom", "s3cret"))[0] == 200
    finally:
        exp.stop()


def test_utf8_non_ascii_bytes_in_the_header_are_401() -> None:
    exp = Exporter("127.0.0.1:0", auth_user="prom",
                   auth_sha256=hashlib.sha256(b"x").hexdigest())
    exp.start()
    try:
        with socket.create_connection(("127.0.0.1", exp.port), timeout=10) as s:
            s.sendall("GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Basic ☃☃\r\n"
                      "Connection: close\r\n\r\n".encode())
            assert s.recv(4096).startswith(b"HTTP/1.1 401 ")
    finally:
        exp.stop()


def _web_config(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "web.yml"
    p.write_text(text)
    return p


@pytest.fixture(scope="module")
def prom_hash() -> str:
    return bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()


def test_bcrypt_users_good_and_bad_passwords_cached_only_when_good(
        tmp_path: Path, prom_hash: str) -> None:
    wc = load_web_config(_web_config(tmp_path, f"basic_auth_users:\n  prom: '{prom_hash}'\n"))
    exp = Exporter("127.0.0.1:0", web_config=wc)
    exp.start()
    exp.publish(b"up 1\n")
    try:
        code, headers, _ = get(exp.url + "/metrics")
        assert code == 401 and headers["WWW-Authenticate"].startswith("Basic")
        assert get(exp.url + "/metrics", basic("prom", "wrong"))[0] == 401
        assert get(exp.url + "/metrics", basic("prom", "wrong"))[0] == 401
        assert get(exp.url + "/metrics", basic("other", "s3cret"))[0] == 401
        assert exp.auth.bcrypt_checks == 3  # wrong ones are never remembered
        for _ in range(3):
            assert get(exp.url + "/metrics", basic("prom", "s3cret"))[:3:2] == (200, b"up 1\n")
        assert exp.auth.bcrypt_checks == 4  # the good one: bcrypt once, then remembered
        assert get(exp.url + "/metrics", basic("prom", "s3cret2"))[0] == 401
    finally:
        exp.stop()


def test_tls_and_client_certificates_from_the_web_config_file(
        tmp_path: Path, certs: Path, prom_hash: str) -> None:
    for f in certs.iterdir():
        shutil.copy(f, tmp_path / f.name)
    # relative paths are from the file's folder, as exporter-toolkit reads them
    p = _web_config(tmp_path, f"""
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: client.crt
  min_version: TLS12
http_server_config:
  http2: true
  headers:
    X-Content-Type-Options: nosniff
basic_auth_users:
  prom: {prom_hash}
""")
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(f'[exporter]\nlisten = "127.0.0.1:1"\nweb_config_file = "{p}"\n')
    cfg = load_config(cfg_file, environ={})
    exp = Exporter.from_config(cfg)
    exp._port = 0
    exp.start()
    exp.publish(b"up 1\n")
    try:
        assert exp.url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(tmp_path / "server.crt"))
        # no client certificate: the handshake is refused
        with pytest.raises((urllib.error.URLError, OSError)):
            get(exp.url + "/metrics", basic("prom", "s3cret"), context=ctx)
        ctx.load_cert_chain(str(tmp_path / "client.crt"), str(tmp_path / "client.key"))
        assert get(exp.url + "/metrics", context=ctx)[0] == 401
        code, headers, data = get(exp.url + "/metrics", basic("prom", "s3cret"), context=ctx)
        assert (code, data) == (200, b"up 1\n")
        assert headers["X-Content-Type-Options"] == "nosniff"
    finally:
        exp.stop()


@pytest.mark.parametrize(("text", "words"), [
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [x]\n",
     "cipher_suites: not supported"),
    ("tls_server_config:\n  cert_file: a\n", "both cert_file and key_file"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Maybe\n",
     "client_auth_type"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n"
     "  client_auth_type: RequireAndVerifyClientCert\n", "needs client_ca_file"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: SSL3\n", "min_version"),
    ("basic_auth_users:\n  prom: " + hashlib.sha256(b"pw").hexdigest() + "\n",  # the old way
     "not a bcrypt hash"),
    ("http_server_config:\n  headers:\n    Set-Cookie: x\n", "Set-Cookie"),
    ("tls_config: {}\n", "tls_config: unknown"),
    ("- a list\n", "must be a YAML mapping"),
    ("basic_auth_users: [\n", "YAML syntax error"),
])
def test_bad_web_config_file_names_file_and_key(tmp_path: Path, text: str, words: str) -> None:
    p = _web_config(tmp_path, text)
    with pytest.raises(ConfigError, match=words) as e:
        load_web_config(p)
    assert str(p) in str(e.value)


def test_missing_web_config_file_and_unloadable_certificate(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_web_config(tmp_path / "absent.yml")
    (tmp_path / "c.pem").write_text("not a cert")
    wc = load_web_config(_web_config(tmp_path, "tls_server_config:\n  cert_file: c.pem\n"
                                               "  key_file: c.pem\n"))
    with pytest.raises(ConfigError, match=r"web\.yml: tls_server_config\.cert_file"):
        Exporter("127.0.0.1:0", web_config=wc).start()


def test_sha256_setting_still_works_with_a_deprecation_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, prom_hash: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[exporter]\nbasic_auth_user = "prom"\nbasic_auth_password_sha256 = "'
                 + hashlib.sha256(b"s3cret").hexdigest() + '"\n')
    with caplog.at_level(logging.WARNING, logger="governor.exporter"):
        exp = Exporter.from_config(load_config(p, environ={}))
    assert any("deprecated" in r.getMessage() and "bcrypt" in r.getMessage()
               for r in caplog.records)
    assert exp.auth.check(basic("prom", "s3cret")["Authorization"])
    assert not exp.auth.check(basic("prom", "nope")["Authorization"])
    # both ways at once is refused
    wc = load_web_config(_web_config(tmp_path, f"basic_auth_users:\n  prom: '{prom_hash}'\n"))
    with pytest.raises(ConfigError, match="basic auth is set twice"):
        Exporter("127.0.0.1:0", auth_user="prom", auth_sha256="0" * 64, web_config=wc)


def test_an_idle_exporter_does_not_wake_and_stops_at_once() -> None:
    """Issue #16: the accept loop sleeps until a connection, a deadline or stop
    (socketserver's own woke five times a second, idle or not); a connection's deadline
    still wakes it, and stop returns at once."""
    exp = Exporter("127.0.0.1:0", request_timeout=0.5)
    exp.start()
    try:
        srv = exp._server
        assert srv is not None
        time.sleep(0.2)
        before = srv.turns
        time.sleep(1.5)
        assert srv.turns - before == 0   # no clock: nothing woke it
        assert get(exp.url + "/livez")[0] in (200, 503)   # a scrape is served at once
        # an idle connection is still closed in time (its deadline wakes the loop that
        # slept: test_slowly_trickled_request_is_cut_at_its_deadline trickles past the
        # per-read timeout)
        with socket.create_connection(("127.0.0.1", exp.port)) as s:
            s.settimeout(5)
            t0 = time.monotonic()
            assert s.recv(4096) == b""
            assert time.monotonic() - t0 < 0.5 + 2.0
    finally:
        t0 = time.monotonic()
        exp.stop()
        assert time.monotonic() - t0 < 1.0
        assert exp._thread is None


def test_an_exporter_stopped_before_its_loop_started_stays_stopped() -> None:
    exp = Exporter("127.0.0.1:0")
    exp.start()
    srv = exp._server
    assert srv is not None
    srv.shutdown()                      # whether or not the loop has begun
    srv.serve_forever()                 # returns at once: shut down stays shut down
    exp.stop()
