"""Structured logs: one line per event worth knowing, ``key=value`` or JSON (journald-friendly:
no timestamps of our own when stderr goes to the journal, which stamps every line, and each
line prefixed with its syslog priority, ``<3>`` for an error, which journald strips and
records as the entry's PRIORITY: ``journalctl -p warning`` then shows warnings and worse).

Stderr is the journal when ``$JOURNAL_STREAM`` names its device and inode (systemd.exec(5):
a child that inherited the variable with stderr redirected elsewhere does not match).
``GOVERNOR_LOG_PRIORITY_PREFIX=1`` (or ``0``) forces the prefix on (or off), e.g. for a
stderr piped to a collector that understands it.

No password reaches a log line: both formatters pass the whole line (message, extra fields
and the traceback's text) through :func:`mask_secrets`, which replaces the password of any
``scheme://user:password@host`` URL, ``password=...`` (and ``secret``, ``token``,
``api_key``) values and ``Authorization`` header values with ``***`` (issue #15)."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


#: what :func:`mask_secrets` replaces a secret with
MASK = "***"

# scheme://user:password@host: any scheme (postgresql, postgresql+psycopg, mysql, http,
# https, amqp ...); the password runs to the last "@" before whitespace or a quote (a raw "@"
# in a password masks the rest of it too: masking too much is safe, too little is not)
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"<>]*:)[^\s'\"<>]*@")
# password=... in libpq DSNs ("host=h password=x"), query strings and key=value lines;
# a quoted value is masked whole (libpq quotes with single quotes, we with double); a key
# that ends a path or a name ("/etc/passwd: file is not a database") is not one
_KEY_VALUE = re.compile(
    r"(?P<head>(?<![\w/])(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?token)"
    r"\s*[=:]\s*)(?:'(?:[^'\\]|\\.)*'|\\?\"(?:[^\"\\]|\\.)*\\?\"|[^\s&;,'\"\\]+)",
    re.IGNORECASE)
# an Authorization header's credentials ("Authorization: Basic dXNlcjpwdw==")
_AUTH_HEADER = re.compile(
    r"(?P<head>\bauthorization['\"]?\s*[=:]\s*['\"]?)(?:(?:basic|bearer|digest)\s+)?"
    r"[^\s'\",]+", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """``text`` with every password we can recognise replaced by ``***``: URL userinfo
    passwords (``postgresql://u:***@host/db``), ``password=***`` (also ``secret``,
    ``token``, ``api_key``) and ``Authorization: ***`` values.  The one masking function for
    log lines, command-line errors and echoed URLs."""
    if not text:
        return text
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK + "@", text)
    text = _AUTH_HEADER.sub(lambda m: m["head"] + MASK, text)
    return _KEY_VALUE.sub(lambda m: m["head"] + MASK, text)


class MaskSecrets(logging.Filter):
    """A handler filter that masks a record in place (message, arguments, string extras,
    the exception's text) for handlers whose formatter is not one of ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_secrets(record.getMessage())
        record.args = None
        for k, v in list(record.__dict__.items()):
            if k not in _RESERVED and not k.startswith("_") and isinstance(v, str):
                record.__dict__[k] = mask_secrets(v)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        return True


def _quote(v: object) -> str:
    s = str(v)
    if s == "" or any(c in s for c in ' "=\n\t'):
        return json.dumps(s)
    return s


#: logging level -> syslog priority (sd-daemon(3): SD_CRIT, SD_ERR, SD_WARNING, SD_INFO, SD_DEBUG)
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
               (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level (levels in between round to the next lower
    severity: 35 is a warning)."""
    for level, prio in _PRIORITIES:
        if levelno >= level:
            return prio
    return 7


def stderr_is_journal(environ: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """Whether ``fd`` is the journal stream systemd connected (``$JOURNAL_STREAM`` is
    ``DEVICE:INODE`` of it, in decimal)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def priority_prefix_wanted(environ: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """``GOVERNOR_LOG_PRIORITY_PREFIX`` when set (1/yes/true or 0/no/false), else whether
    ``fd`` is the journal."""
    env = os.environ if environ is None else environ
    forced = env.get("GOVERNOR_LOG_PRIORITY_PREFIX", "").strip().lower()
    if forced in ("1", "yes", "true", "on"):
        return True
    if forced in ("0", "no", "false", "off"):
        return False
    return stderr_is_journal(env, fd)


class KeyValueFormatter(logging.Formatter):
    def __init__(self, *, stamp: bool, priority_prefix: bool = False) -> None:
        super().__init__()
        self.stamp = stamp
        self.priority_prefix = priority_prefix

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if self.stamp:
            parts.append("ts=" + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                         + f".{int(record.msecs):03d}Z")
        parts += [f"level={record.levelname.lower()}", f"msg={_quote(record.getMessage())}"]
        for k, v in record.__dict__.items():
            if k not in _RESERVED and not k.startswith("_"):
                parts.append(f"{k}={_quote(v)}")
        if record.exc_info:
            parts.append("exc=" + _quote(self.formatException(record.exc_info)))
        line = mask_secrets(" ".join(parts))
        return f"<{syslog_priority(record.levelno)}>{line}" if self.priority_prefix else line


class JsonFormatter(logging.Formatter):
    def __init__(self, *, priority_prefix: bool = False) -> None:
        super().__init__()
        self.priority_prefix = priority_prefix

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "msg": record.getMessage()}
        for k, v in record.__dict__.items():
            if k not in _RESERVED and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        line = mask_secrets(json.dumps(out, default=str))
        return f"<{syslog_priority(record.levelno)}>{line}" if self.priority_prefix else line


def setup_logging(fmt: str = "keyvalue", level: str = "info", *,
                  priority_prefix: bool | None = None) -> logging.Logger:
    """Log lines on stderr; ``priority_prefix`` None: :func:`priority_prefix_wanted`."""
    handler = logging.StreamHandler(sys.stderr)
    under_journal = stderr_is_journal()
    prefix = priority_prefix_wanted() if priority_prefix is None else priority_prefix
    handler.setFormatter(JsonFormatter(priority_prefix=prefix) if fmt == "json"
                         else KeyValueFormatter(stamp=not under_journal,
                                                priority_prefix=prefix))
    handler.addFilter(MaskSecrets())
    root = logging.getLogger("governor")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    return root
