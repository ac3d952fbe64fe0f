"""governor.log: syslog priority prefixes for journald, and when they are written."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest

from governor.log import (
    JsonFormatter,
    KeyValueFormatter,
    priority_prefix_wanted,
    setup_logging,
    stderr_is_journal,
    syslog_priority,
)


def record(level: int, msg: str = "policy applied", **extra: object) -> logging.LogRecord:
    r = logging.LogRecord("governor.enforce", level, __file__, 1, msg, None, None)
    r.__dict__.update(extra)
    return r


@pytest.mark.parametrize(("level", "prio"), [
    (logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6),
    (logging.DEBUG, 7), (35, 4), (5, 7)])
def test_syslog_priority(level: int, prio: int) -> None:
    assert syslog_priority(level) == prio


def test_keyvalue_line_prefixed_with_its_priority() -> None:
    f = KeyValueFormatter(stamp=False, priority_prefix=True)
    assert f.format(record(logging.ERROR, failed=2)) == \
        '<3>level=error msg="policy applied" failed=2'
    assert f.format(record(logging.INFO)).startswith("<6>level=info ")
    assert f.format(record(logging.DEBUG)).startswith("<7>level=debug ")
    assert f.format(record(logging.WARNING)).startswith("<4>level=warning ")
    assert f.format(record(logging.CRITICAL)).startswith("<2>level=critical ")
    plain = KeyValueFormatter(stamp=False)
    assert plain.format(record(logging.ERROR)) == 'level=error msg="policy applied"'


def test_a_traceback_stays_on_the_prefixed_line() -> None:
    f = KeyValueFormatter(stamp=False, priority_prefix=True)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        r = record(logging.ERROR, "metering failed")
        r.exc_info = sys.exc_info()
    line = f.format(r)
    assert line.startswith("<3>level=error") and "\n" not in line and "boom" in line


def test_json_line_prefixed() -> None:
    line = JsonFormatter(priority_prefix=True).format(record(logging.WARNING, x=1))
    assert line.startswith("<4>{")
    assert json.loads(line[3:])["level"] == "warning"
    assert JsonFormatter().format(record(logging.WARNING)).startswith("{")


def test_journal_detected_by_device_and_inode(tmp_path: Path) -> None:
    f = tmp_path / "stream"
    f.write_text("")
    with f.open("w") as fh:
        st = os.fstat(fh.fileno())
        ok = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert stderr_is_journal(ok, fh.fileno())
        assert priority_prefix_wanted(ok, fh.fileno())
        # inherited by a process whose stderr was redirected elsewhere: no match
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"},
                                     fh.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": "garbage"}, fh.fileno())
        assert not stderr_is_journal({}, fh.fileno())
        # forced either way
        assert not priority_prefix_wanted({**ok, "GOVERNOR_LOG_PRIORITY_PREFIX": "0"},
                                          fh.fileno())
        assert priority_prefix_wanted({"GOVERNOR_LOG_PRIORITY_PREFIX": "yes"}, fh.fileno())


def test_setup_logging_uses_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOVERNOR_LOG_PRIORITY_PREFIX", "1")
    root = setup_logging("keyvalue", "info")
    try:
        fmt = root.handlers[0].formatter
        assert isinstance(fmt, KeyValueFormatter) and fmt.priority_prefix
        root = setup_logging("json", "info", priority_prefix=False)
        fmt2 = root.handlers[0].formatter
        assert isinstance(fmt2, JsonFormatter) and not fmt2.priority_prefix
    finally:
        root.handlers[:] = []
        root.propagate = True
        root.setLevel(logging.NOTSET)
