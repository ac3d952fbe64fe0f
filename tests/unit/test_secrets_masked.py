"""Issue #15 item 16: no password on the terminal or in a log line (tracebacks included)."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

import governor.store.cli
from governor.cli import main
from governor.log import JsonFormatter, KeyValueFormatter, MaskSecrets, mask_secrets, setup_logging

SECRET = "s3cret"


@pytest.mark.parametrize(("text", "masked"), [
    ("postgresql://u:s3cret@127.0.0.1:5432/x", "postgresql://u:***@127.0.0.1:5432/x"),
    ("postgresql+psycopg://gov:s3cret@db/gov?sslmode=require",
     "postgresql+psycopg://gov:***@db/gov?sslmode=require"),
    ("mysql://root:s3cret@h/db", "mysql://root:***@h/db"),
    ("see https://hook:s3cret@alerts.example/x now", "see https://hook:***@alerts.example/x now"),
    ("postgresql://u:p@s3cret@h/db", "postgresql://u:***@h/db"),  # a raw "@" in it
    ("(url='postgresql://u:s3cret@h/db')", "(url='postgresql://u:***@h/db')"),
    ("host=db user=gov password=s3cret dbname=gov", "host=db user=gov password=*** dbname=gov"),
    ("password='s3 cret' host=db", "password=*** host=db"),
    ("https://h/x?token=s3cret&a=1", "https://h/x?token=***&a=1"),
    ("Authorization: Basic czNjcmV0", "Authorization: ***"),
    # nothing secret: unchanged
    ("postgresql://gov@db/gov", "postgresql://gov@db/gov"),
    ("sqlite:////var/lib/governor/governor.db", "sqlite:////var/lib/governor/governor.db"),
    # a key that ends a path is no key: the file name stays readable
    ("sqlite:////etc/passwd: file is not a database",
     "sqlite:////etc/passwd: file is not a database"),
    ("database.password = s3cret", "database.password = ***"),
    ("http://127.0.0.1:9717/metrics", "http://127.0.0.1:9717/metrics"),
    ("password authentication failed for user \"gov\"",
     "password authentication failed for user \"gov\""),
])
def test_mask_secrets(text: str, masked: str) -> None:
    assert mask_secrets(text) == masked


def _failing() -> None:
    raise RuntimeError("cannot connect to postgresql+psycopg://gov:s3cret@db/gov "
                       "(dsn: host=db password=s3cret)")


@pytest.fixture
def governor_log() -> Iterator[io.StringIO]:
    """The daemon's logging set up as `governor run` does, into a buffer."""
    buf = io.StringIO()
    root = setup_logging("keyvalue", "debug", priority_prefix=False)
    root.handlers[0].setStream(buf)  # type: ignore[attr-defined]
    try:
        yield buf
    finally:
        root.handlers[:] = []
        root.propagate = True
        root.setLevel(logging.NOTSET)


def test_daemon_log_never_shows_a_password(governor_log: io.StringIO) -> None:
    log = logging.getLogger("governor.daemon")
    try:
        _failing()
    except RuntimeError:
        log.exception("database check failed for %s", "postgresql://gov:s3cret@db/gov",
                      extra={"url": "postgresql://gov:s3cret@db/gov"})
    text = governor_log.getvalue()
    assert "database check failed" in text and "Traceback" in text
    assert "gov:***@db/gov" in text
    assert SECRET not in text


@pytest.mark.parametrize("formatter", [KeyValueFormatter(stamp=True), JsonFormatter()])
def test_both_formatters_mask_message_extras_and_traceback(
        formatter: logging.Formatter) -> None:
    try:
        _failing()
    except RuntimeError:
        r = logging.LogRecord("governor.x", logging.ERROR, __file__, 1, "url %s",
                              ("mysql://a:s3cret@h/d",), sys.exc_info())
    r.webhook = "https://u:s3cret@h/x"
    line = formatter.format(r)
    assert SECRET not in line and "RuntimeError" in line
    if isinstance(formatter, JsonFormatter):
        json.loads(line)  # masking keeps it valid JSON


def test_mask_filter_rewrites_the_record_for_foreign_formatters() -> None:
    try:
        _failing()
    except RuntimeError:
        r = logging.LogRecord("governor.x", logging.ERROR, __file__, 1, "url %s",
                              ("mysql://a:s3cret@h/d",), sys.exc_info())
    r.dsn = "password=s3cret"
    assert MaskSecrets().filter(r)
    line = logging.Formatter("%(message)s %(dsn)s").format(r)
    assert "Traceback" in line and SECRET not in line


def test_cli_config_error_never_prints_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    # an unsupported scheme is refused by the configuration with the value in the message
    assert main(["db", "upgrade", "--database", "mysql://root:s3cret@db/gov"]) == 2
    out = capsys.readouterr()
    assert "governor: error:" in out.err and "mysql://root:***@db/gov" in out.err
    assert SECRET not in out.err + out.out


def test_cli_unexpected_error_one_masked_line_no_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def boom(url: str) -> tuple[str, str]:
        raise RuntimeError(f"cannot connect to {url}\nsecond line")

    monkeypatch.setattr(governor.store.cli, "run_db_upgrade", boom)
    url = "postgresql+psycopg://gov:s3cret@127.0.0.1:1/gov"
    assert main(["db", "upgrade", "--database", url]) == 2
    out = capsys.readouterr()
    assert "Traceback" not in out.err and SECRET not in out.err + out.out
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "unexpected RuntimeError" in lines[0]
    assert "gov:***@127.0.0.1:1/gov" in lines[0] and "debug" in lines[0]
    # asked for, the traceback is there, masked
    monkeypatch.setenv("GOVERNOR_LOG_LEVEL", "debug")
    assert main(["db", "upgrade", "--database", url]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "boom" in err and SECRET not in err


def test_cli_unexpected_error_traceback_in_the_daemon_log(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        governor_log: io.StringIO) -> None:
    def boom(url: str) -> tuple[str, str]:
        raise RuntimeError(f"cannot connect to {url}")

    monkeypatch.setattr(governor.store.cli, "run_db_upgrade", boom)
    assert main(["db", "upgrade", "--database", "postgresql://gov:s3cret@h/gov"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and SECRET not in err
    text = governor_log.getvalue()
    assert "unexpected error" in text and "Traceback" in text and SECRET not in text
