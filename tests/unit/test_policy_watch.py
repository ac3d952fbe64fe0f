"""The daemon's policy watch: inotify on the policy's directory, a signature to confirm
(issue #16: the daemon waits on it instead of checking every second)."""

from __future__ import annotations

import os
import select
from pathlib import Path

from governor.enforce.keeper import PolicyWatcher


def readable(w: PolicyWatcher, timeout: float = 2.0) -> bool:
    fd = w.fileno()
    assert fd is not None
    return bool(select.select([fd], [], [], timeout)[0])


def test_a_policy_file_saved_in_place_or_by_rename_wakes_the_watch(tmp_path: Path) -> None:
    pol = tmp_path / "policy.toml"
    pol.write_text("[tenants.a]\n")
    w = PolicyWatcher(str(pol), watch=True)
    try:
        assert not readable(w, 0.1) and not w.changed()
        pol.write_text("[tenants.a]\ncpu.weight = 10\n")          # written and closed
        assert readable(w)
        w.drain()
        assert w.changed() and not w.changed()
        new = tmp_path / ".policy.toml.swp"
        new.write_text("[tenants.b]\n")
        os.replace(new, pol)                                       # an editor's rename
        assert readable(w)
        w.drain()
        assert w.changed()
        (tmp_path / "other.txt").write_text("x")   # next to it: looked at, not a change
        assert readable(w)
        w.drain()
        assert not w.changed()
    finally:
        w.close()


def test_no_event_while_a_file_is_being_written(tmp_path: Path) -> None:
    # the watch wakes when the file is closed, never on a half-written (truncated) file
    pol = tmp_path / "policy.toml"
    pol.write_text("[tenants.a]\n")
    w = PolicyWatcher(str(pol), watch=True)
    try:
        with pol.open("w") as f:
            f.write("[tenants")
            f.flush()
            assert not readable(w, 0.2)
            f.write(".b]\n")
        assert readable(w)
    finally:
        w.close()


def test_drop_in_directory_and_a_directory_made_later(tmp_path: Path) -> None:
    d = tmp_path / "policy.d"
    w = PolicyWatcher(str(d), watch=True)
    try:
        # the directory does not exist yet: its parent is watched until it is made
        d.mkdir()
        assert readable(w)
        w.drain()
        assert not w.changed()        # no *.toml yet; the watch moves to the directory
        (d / "10-a.toml").write_text("[tenants.a]\n")
        assert readable(w)
        w.drain()
        assert w.changed()
        (d / "20-b.toml").write_text("[tenants.b]\n")
        assert readable(w)
        w.drain()
        assert w.changed()
        (d / "20-b.toml").unlink()
        assert readable(w)
        w.drain()
        assert w.changed()
        # the directory goes: the watch ends (polled until it is set again)
        (d / "10-a.toml").unlink()
        d.rmdir()
        assert readable(w)
        w.drain()
        assert w.fileno() is None
        assert w.changed()            # polled: gone; and the parent is watched again
        assert w.fileno() is not None
    finally:
        w.close()


def test_without_a_watch_the_signature_still_decides(tmp_path: Path) -> None:
    pol = tmp_path / "policy.toml"
    pol.write_text("[tenants.a]\n")
    w = PolicyWatcher(str(pol))
    assert w.fileno() is None and not w.changed()
    pol.write_text("[tenants.a]\ncpu.weight = 10\n")
    assert w.changed()


def test_the_daemons_wait_ends_at_a_signal_or_a_policy_change(tmp_path: Path) -> None:
    """The main loop waits in select() for as long as nothing is due; a signal (its
    handler runs while select is interrupted, then select would resume) ends the wait
    through the wake pipe, and a policy change through the watch."""
    import signal
    import threading
    import time

    from governor.daemon import Daemon

    pol = tmp_path / "policy.toml"
    pol.write_text("[tenants.a]\n")
    d = object.__new__(Daemon)
    d.stop_event, d.reload_event = threading.Event(), threading.Event()
    d._wake_r, d._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    d.watcher = PolicyWatcher(str(pol), watch=True)
    before = signal.signal(signal.SIGHUP, d._on_signal)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGHUP))
        t0 = time.monotonic()
        assert d._wait(20.0) is False          # woken by the signal, not the policy
        assert time.monotonic() - t0 < 5 and d.reload_event.is_set()
        threading.Timer(0.2, lambda: pol.write_text("[tenants.b]\n")).start()
        t0 = time.monotonic()
        assert d._wait(20.0) is True           # the policy's directory changed
        assert time.monotonic() - t0 < 5 and d.watcher.changed()
        t0 = time.monotonic()
        assert d._wait(0.3) is False and time.monotonic() - t0 >= 0.25   # nothing: waits
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGHUP, before)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        d.watcher.close()
        d._close_wake()
