"""The Prometheus web configuration file: TLS and basic auth as every Prometheus exporter
takes them (``--web.config.file`` of prometheus/exporter-toolkit, docs/web-configuration.md
there), named by ``[exporter] web_config_file``::

    tls_server_config:
      cert_file: /etc/governor/tls/server.crt     # relative paths: from this file's folder
      key_file: /etc/governor/tls/server.key
      client_auth_type: RequireAndVerifyClientCert   # default NoClientCert
      client_ca_file: /etc/governor/tls/clients-ca.crt
      min_version: TLS12                           # TLS10 .. TLS13; default TLS12
      max_version: TLS13
    http_server_config:
      headers:                                     # added to every answer
        X-Content-Type-Options: nosniff
    basic_auth_users:
      prometheus: $2b$10$...                       # bcrypt: htpasswd -nBC 10 "" | tr -d ':\\n'

A key governor does not implement (``cipher_suites``, ``curve_preferences``,
``client_allowed_sans``, ...) is refused, never ignored: a file written for another exporter
must not look stricter than what governor enforces.  ``http_server_config.http2`` is accepted
and has no effect (governor serves HTTP/1.1, which Prometheus scrapes as well).

Passwords are checked with bcrypt, whose cost (~50 ms at cost 10) would be paid by every
scrape: a good user and password is remembered (in memory, keyed by an HMAC of both with a
per-process key), as exporter-toolkit does.  A wrong one is never remembered: each try costs
the full bcrypt time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from governor.errors import ConfigError

log = logging.getLogger("governor.exporter")

#: client_auth_type -> ssl verify mode (Go's tls.ClientAuthType names)
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
#: the answer headers a web config may set (exporter-toolkit's list)
HEADERS = ("Strict-Transport-Security", "X-Content-Type-Options", "X-Frame-Options",
           "X-XSS-Protection", "Content-Security-Policy")
_TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version",
             "max_version"}
_HTTP_KEYS = {"headers", "http2"}
#: how many good user/password pairs are remembered at most
CACHE_SIZE = 256
_dummy: bytes | None = None


def _dummy_hash() -> bytes:
    """A bcrypt hash checked for an unknown user, so that a wrong user costs as long as a
    wrong password (no user enumeration by timing); made once, of a random password."""
    global _dummy
    if _dummy is None:
        import bcrypt

        _dummy = bcrypt.hashpw(os.urandom(18).hex().encode(), bcrypt.gensalt(10))
    return _dummy


@dataclass
class WebConfig:
    """A parsed web configuration file."""

    file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    client_auth_type: str = "NoClientCert"
    client_ca_file: str | None = None
    min_version: str = "TLS12"
    max_version: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: user -> bcrypt hash
    users: dict[str, bytes] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        return self.cert_file is not None

    def ssl_context(self) -> ssl.SSLContext:
        """The server's TLS context; a :class:`ConfigError` naming the file when a
        certificate, key or CA cannot be loaded."""
        assert self.cert_file is not None and self.key_file is not None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = TLS_VERSIONS[self.min_version]
        if self.max_version is not None:
            ctx.maximum_version = TLS_VERSIONS[self.max_version]
        key = "tls_server_config.cert_file" if self.file else "exporter.tls_cert"
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
            if self.client_ca_file is not None:
                key = "tls_server_config.client_ca_file"
                ctx.load_verify_locations(cafile=self.client_ca_file)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"cannot load TLS certificate, key or CA: {e}", file=self.file,
                              key=key) from e
        ctx.verify_mode = CLIENT_AUTH[self.client_auth_type]
        return ctx


def _section(doc: dict[str, Any], name: str, keys: set[str], file: str) -> dict[str, Any]:
    body = doc.get(name) or {}
    if not isinstance(body, dict):
        raise ConfigError("must be a mapping", file=file, key=name)
    unknown = sorted(set(body) - keys)
    if unknown:
        raise ConfigError(f"{', '.join(map(str, unknown))}: not supported by governor's "
                          f"exporter (it takes: {', '.join(sorted(keys))})", file=file,
                          key=name)
    return body


def _path(base: Path, value: object, file: str, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{value!r} is not a file name", file=file, key=key)
    return str(base / value)


def load_web_config(path: str | os.PathLike[str]) -> WebConfig:
    """Read and check a web configuration file (YAML)."""
    import yaml

    file = str(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read the web configuration file: {e.strerror}",
                          file=file, key="exporter.web_config_file") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text ({e.reason} at byte {e.start})", file=file) from e
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"YAML syntax error: {e}", file=file) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError("must be a YAML mapping (tls_server_config, http_server_config, "
                          "basic_auth_users)", file=file)
    known = {"tls_server_config", "http_server_config", "basic_auth_users"}
    unknown = sorted(map(str, set(doc) - known))
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: unknown (known: {', '.join(sorted(known))})",
                          file=file)
    base = Path(file).parent
    wc = WebConfig(file=file)
    tls = _section(doc, "tls_server_config", _TLS_KEYS, file)
    if tls:
        if not tls.get("cert_file") or not tls.get("key_file"):
            raise ConfigError("give both cert_file and key_file", file=file,
                              key="tls_server_config")
        wc.cert_file = _path(base, tls["cert_file"], file, "tls_server_config.cert_file")
        wc.key_file = _path(base, tls["key_file"], file, "tls_server_config.key_file")
        if tls.get("client_ca_file") is not None:
            wc.client_ca_file = _path(base, tls["client_ca_file"], file,
                                      "tls_server_config.client_ca_file")
        cat = tls.get("client_auth_type", "NoClientCert")
        if cat not in CLIENT_AUTH:
            raise ConfigError(f"{cat!r}: use one of {', '.join(CLIENT_AUTH)}", file=file,
                              key="tls_server_config.client_auth_type")
        wc.client_auth_type = cat
        if cat in ("RequireAndVerifyClientCert", "VerifyClientCertIfGiven") and \
                wc.client_ca_file is None:
            raise ConfigError(f"{cat} needs client_ca_file (the CA that signs the clients' "
                              "certificates)", file=file, key="tls_server_config")
        for k in ("min_version", "max_version"):
            v = tls.get(k)
            if v is not None and v not in TLS_VERSIONS:
                raise ConfigError(f"{v!r}: use one of {', '.join(TLS_VERSIONS)}", file=file,
                                  key=f"tls_server_config.{k}")
        wc.min_version = tls.get("min_version") or "TLS12"
        wc.max_version = tls.get("max_version")
    http = _section(doc, "http_server_config", _HTTP_KEYS, file)
    headers = http.get("headers") or {}
    if not isinstance(headers, dict):
        raise ConfigError("must be a mapping of header: value", file=file,
                          key="http_server_config.headers")
    for name, value in headers.items():
        canon = next((h for h in HEADERS if h.lower() == str(name).lower()), None)
        if canon is None:
            raise ConfigError(f"{name!r}: not a header the web configuration may set (it "
                              f"may set {', '.join(HEADERS)})", file=file,
                              key="http_server_config.headers")
        if not isinstance(value, str) or any(c in value for c in "\r\n"):
            raise ConfigError(f"{value!r} is not a header value", file=file,
                              key=f"http_server_config.headers.{name}")
        wc.headers[canon] = value
    users = doc.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise ConfigError("must be a mapping of user: bcrypt hash", file=file,
                          key="basic_auth_users")
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")) \
                or len(hashed) != 60:
            raise ConfigError("not a bcrypt hash (60 characters, $2y$/$2b$...); make one "
                              "with: htpasswd -nBC 10 \"\" | tr -d ':\\n'", file=file,
                              key=f"basic_auth_users.{user}")
        if ":" in str(user):
            raise ConfigError("a user name cannot contain ':'", file=file,
                              key=f"basic_auth_users.{user}")
        wc.users[str(user)] = hashed.encode()
    return wc


def credentials(header: str) -> tuple[str, str] | None:
    """``Authorization: Basic ...`` -> ``(user, password)``; None for anything else (another
    scheme, bad base64, non-ASCII, not UTF-8, no colon): never an exception."""
    scheme, _, blob = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(blob.strip().encode("ascii"), validate=True)
        user, sep, password = raw.decode("utf-8").partition(":")
    except (ValueError, binascii.Error):  # UnicodeError is a ValueError
        return None
    return (user, password) if sep else None


class Authenticator:
    """Basic auth for the endpoint: bcrypt users (a web configuration file), or the
    deprecated ``basic_auth_user`` with the hex SHA-256 of its password."""

    def __init__(self, users: dict[str, bytes] | None = None, *,
                 legacy_user: str | None = None, legacy_sha256: str | None = None) -> None:
        self.users = dict(users or {})
        self.legacy_user = legacy_user
        self.legacy_sha256 = legacy_sha256.lower() if legacy_sha256 else None
        self._key = os.urandom(32)
        self._good: dict[bytes, None] = {}  # insertion-ordered: the oldest goes first
        self._lock = threading.Lock()
        self.bcrypt_checks = 0  # how many times bcrypt ran (the cache's effect is tested)

    @property
    def enabled(self) -> bool:
        return bool(self.users) or self.legacy_user is not None

    def check(self, header: str | None) -> bool:
        """Whether the ``Authorization`` header's user and password are good."""
        if not self.enabled:
            return True
        cred = credentials(header or "")
        if cred is None:
            return False
        user, password = cred
        if self.legacy_user is not None:
            digest = hashlib.sha256(password.encode()).hexdigest()
            # both compared in constant time, and both always compared
            ok_user = hmac.compare_digest(user.encode(), self.legacy_user.encode())
            ok_pass = hmac.compare_digest(digest, self.legacy_sha256 or "")
            return ok_user and ok_pass
        key = hmac.digest(self._key, user.encode() + b"\0" + password.encode(), "sha256")
        with self._lock:
            if key in self._good:
                return True
        import bcrypt

        hashed = self.users.get(user)
        self.bcrypt_checks += 1
        try:
            ok = bcrypt.checkpw(password.encode(), hashed if hashed is not None else _dummy_hash())
        except ValueError:  # a malformed hash (checked at load) or an over-long password
            ok = False
        ok = ok and hashed is not None
        if ok:
            with self._lock:
                self._good[key] = None
                while len(self._good) > CACHE_SIZE:
                    del self._good[next(iter(self._good))]
        return ok
