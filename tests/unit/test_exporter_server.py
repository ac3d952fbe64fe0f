"""The exporter endpoint on loopback: /metrics (plain and gzip), /healthz, basic auth, TLS."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from governor.errors import ConfigError
from governor.exporter.render import CONTENT_TYPE, render
from governor.exporter.server import Exporter
from tests.helpers.exposition import parsed_samples, snapshot


def get(url: str, headers: dict[str, str] | None = None,
        context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    exp = Exporter("127.0.0.1:0", stale_after=0.5)
    exp.start()
    yield exp
    exp.stop()


def test_metrics_plain_and_gzip_serve_the_published_rendering(exporter: Exporter) -> None:
    body = render(snapshot(20))
    exporter.publish(body)
    code, headers, data = get(exporter.url + "/metrics")
    assert code == 200 and data == body
    assert headers["Content-Type"] == CONTENT_TYPE
    assert "Content-Encoding" not in headers
    code, headers, data = get(exporter.url + "/metrics", {"Accept-Encoding": "gzip"})
    assert code == 200 and headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(data) == body
    assert len(parsed_samples(gzip.decompress(data).decode())) > 600
    # a new pass replaces what is served
    exporter.publish(b"governor_spool_depth 1\n")
    assert get(exporter.url + "/metrics")[2] == b"governor_spool_depth 1\n"
    assert exporter.scrapes == 3


def test_a_rendering_that_fails_at_scrape_is_a_500_not_a_traceback(
        exporter: Exporter, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Issue #16: a pass publishes a function that renders on the first scrape; if it
    fails, the scrape gets a 500 and the daemon's log the error, and the next pass's
    rendering is served."""
    def broken() -> bytes:
        raise ValueError("a bug in a renderer")

    exporter.publish(broken)
    for enc in ({}, {"Accept-Encoding": "gzip"}):
        code, _, data = get(exporter.url + "/metrics", enc)
        assert code == 500 and b"rendering the metrics failed" in data
    assert "rendering the metrics failed" in caplog.text
    assert "Traceback" not in capsys.readouterr().err
    exporter.publish(lambda: b"governor_spool_depth 0\n")
    code, _, data = get(exporter.url + "/metrics")
    assert (code, data) == (200, b"governor_spool_depth 0\n")


def test_healthz_follows_the_age_of_the_last_publication(exporter: Exporter) -> None:
    code, _, data = get(exporter.url + "/healthz")
    assert code == 503 and json.loads(data)["status"] == "stale"
    exporter.publish(b"", created=1700000000.0)
    code, headers, data = get(exporter.url + "/healthz")
    doc = json.loads(data)
    assert code == 200 and headers["Content-Type"] == "application/json"
    assert doc["status"] == "ok" and doc["last_sample_unix"] == 1700000000.0
    assert 0 <= doc["last_sample_age_seconds"] < 0.5
    time.sleep(0.6)
    code, _, data = get(exporter.url + "/healthz")
    assert code == 503 and json.loads(data)["status"] == "stale"
    assert get(exporter.url + "/nope")[0] == 404


def test_default_listen_is_loopback() -> None:
    exp = Exporter()
    assert (exp.host, exp.port) == ("127.0.0.1", 9717)


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth() -> None:
    digest = hashlib.sha256(b"s3cret").hexdigest()
    exp = Exporter("127.0.0.1:0", auth_user="prom", auth_sha256=digest.upper())
    exp.start()
    try:
        exp.publish(b"x 1\n")
        code, headers, _ = get(exp.url + "/metrics")
        assert code == 401 and headers["WWW-Authenticate"].startswith("Basic")
        assert get(exp.url + "/metrics", _basic("prom", "wrong"))[0] == 401
        assert get(exp.url + "/metrics", _basic("other", "s3cret"))[0] == 401
        assert get(exp.url + "/metrics", {"Authorization": "Basic !!!"})[0] == 401
        assert get(exp.url + "/healthz")[0] == 401
        assert get(exp.url + "/metrics", _basic("prom", "s3cret"))[:3:2] == (200, b"x 1\n")
    finally:
        exp.stop()


@pytest.mark.parametrize(("kw", "match"), [
    ({"tls_cert": "/x.pem"}, "tls_key"),
    ({"auth_user": "u"}, "neither"),
    ({"auth_user": "u", "auth_sha256": "abc"}, "64 hex"),
])
def test_half_configured_tls_or_auth_is_refused(kw: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Exporter("127.0.0.1:0", **kw)


def test_tls_with_a_self_signed_certificate(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    exp = Exporter("127.0.0.1:0", tls_cert=str(cert), tls_key=str(key))
    exp.start()
    try:
        exp.publish(b"y 2\n")
        assert exp.url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(cert))
        code, _, data = get(exp.url + "/metrics", context=ctx)
        assert (code, data) == (200, b"y 2\n")
        # a client that does not trust the certificate is refused the handshake
        with pytest.raises(urllib.error.URLError):
            get(exp.url + "/metrics", context=ssl.create_default_context())
        # plain HTTP on the TLS port gets no metrics; the server keeps serving afterwards
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            get(exp.url.replace("https", "http") + "/metrics")
        assert get(exp.url + "/metrics", context=ctx)[2] == b"y 2\n"
    finally:
        exp.stop()


def test_unloadable_certificate_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("not a cert")
    exp = Exporter("127.0.0.1:0", tls_cert=str(tmp_path / "c.pem"),
                   tls_key=str(tmp_path / "c.pem"))
    with pytest.raises(ConfigError, match="TLS"):
        exp.start()
