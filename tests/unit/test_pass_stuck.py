"""A sampling pass that does not end is logged once with where its thread waits
(governor/daemon/passes.py, SamplingPass.check_stuck): the main loop looks, so a pass
blocked on something that never answers says what it is."""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

import pytest

from governor.daemon.passes import STUCK_AFTER, SamplingPass


def waits_on_something_that_never_answers(started: threading.Event,
                                          release: threading.Event) -> None:
    started.set()
    release.wait(30)


def test_a_stuck_pass_is_logged_once_with_its_frames(caplog: pytest.LogCaptureFixture) -> None:
    sp = SamplingPass.__new__(SamplingPass)
    sp.cfg = SimpleNamespace(sample_interval=2.0)  # type: ignore[assignment]
    sp._pass_running_since = None
    assert sp.check_stuck(time.monotonic()) is None        # no pass: nothing to look at
    started, release = threading.Event(), threading.Event()
    t = threading.Thread(target=waits_on_something_that_never_answers,
                         args=(started, release))
    t.start()
    try:
        assert started.wait(5)
        now = time.monotonic()
        sp._pass_thread, sp._pass_running_since = t.ident, now
        # running, not yet for long: looked at again when it would be
        assert sp.check_stuck(now + 1) == pytest.approx(now + STUCK_AFTER)
        with caplog.at_level(logging.WARNING, logger="governor.daemon"):
            assert sp.check_stuck(now + STUCK_AFTER + 1) is None
            assert sp.check_stuck(now + STUCK_AFTER + 50) is None   # once per pass
        [rec] = caplog.records
        assert rec.msg == "sampling pass still running"
        assert rec.__dict__["running_s"] == pytest.approx(STUCK_AFTER + 1)
        where = rec.__dict__["where"]
        assert where.split(" <- ")[0].startswith("wait (")        # innermost first
        assert "waits_on_something_that_never_answers (" in where
        assert "test_pass_stuck.py:" in where
    finally:
        release.set()
        t.join()


def test_a_long_interval_waits_three_intervals() -> None:
    sp = SamplingPass.__new__(SamplingPass)
    sp.cfg = SimpleNamespace(sample_interval=60.0)  # type: ignore[assignment]
    sp._pass_thread, sp._pass_running_since = threading.get_ident(), 100.0
    assert sp.check_stuck(150.0) == 280.0
