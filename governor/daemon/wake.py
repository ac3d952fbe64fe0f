"""What wakes the daemon's main loop: SIGHUP (reload), SIGTERM and SIGINT (stop), each
recorded as an event and a byte in the wake pipe that ends the loop's ``select()`` at once,
and a possible change of the policy files (inotify on their directory, else a stat of each
every :data:`WATCH_INTERVAL`).  Between them the loop sleeps (issue #16: no wake-ups).
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import select
import signal
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from governor.config import Config
    from governor.enforce.keeper import PolicyWatcher

log = logging.getLogger("governor.daemon")

#: how often the policy files are checked for changes (a stat per file) when inotify
#: cannot watch their directory
WATCH_INTERVAL = 1.0
#: how often they are checked all the same while it does (a symlink's target elsewhere)
WATCH_SAFETY = 30.0


class Wakeups:
    """The :class:`~governor.daemon.Daemon`'s signals, wake pipe and policy watch."""

    # what it uses of the daemon (made by Daemon.__init__ and Daemon._setup)
    stop_event: threading.Event
    reload_event: threading.Event
    _wake_r: int
    _wake_w: int
    _signals_before: dict[int, Any]
    cfg: Config
    watcher: PolicyWatcher
    #: the wake-up fd that :meth:`_install_signals` replaced (put back with the handlers)
    _wakeup_before = -1

    def _stop_if_asked(self) -> None:
        """A SIGTERM/SIGINT during set-up ends it here: exit status 0, nothing applied."""
        if self.stop_event.is_set():
            log.info("stop requested during start-up: exiting before the policy is applied")
            raise SystemExit(0)

    def _install_signals(self) -> dict[int, Any]:
        """SIGHUP, SIGTERM, SIGINT -> :meth:`_on_signal`; the handlers they replace (none
        outside the main thread, where Python cannot install one)."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        # a signal the kernel hands to another thread interrupts nothing in the main
        # one, whose handler then runs only when its select() returns: the signal's
        # byte in the wake pipe ends that wait at once
        self._wakeup_before = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        # SIGUSR1: every thread's stack to stderr (the log), written by the interpreter's
        # own C handler, so it answers even when the main thread is blocked in a call that
        # never returns to Python (docs/operations.md, "Where is it stuck?")
        faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)
        return {sig: signal.signal(sig, self._on_signal)
                for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}

    def _restore_signals(self) -> None:
        if self._signals_before:
            faulthandler.unregister(signal.SIGUSR1)
        for sig, handler in self._signals_before.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if self._signals_before:
            signal.set_wakeup_fd(self._wakeup_before)
        self._signals_before = {}

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reload_event.set()
        else:
            self.stop_event.set()
        with contextlib.suppress(OSError, AttributeError):
            os.write(self._wake_w, b"\0")

    def _wait(self, seconds: float) -> bool:
        """The main loop's wait: until a signal, a possible policy change or ``seconds``
        (issue #16: no wake-ups in between; the loop woke 5 times a second and a
        scheduler job checked the policy every second).  True when the policy files may
        have changed."""
        fd = self.watcher.fileno()
        fds = [self._wake_r] if fd is None else [self._wake_r, fd]
        ready, _, _ = select.select(fds, [], [], seconds)
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass
        if fd is not None and fd in ready:
            self.watcher.drain()
            return True
        return False

    def _close_wake(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _watch(self) -> None:
        if self.watcher.changed():
            log.info("policy files changed", extra={"path": self.cfg.policy})
            self.reload_event.set()

    def _next_watch(self) -> float:
        return time.monotonic() + (WATCH_INTERVAL if self.watcher.fileno() is None
                                   else WATCH_SAFETY)
