"""``governor run``: the daemon that wires the pieces to APScheduler and signals.

Start-up order: configuration -> cgroup2 mount verified -> policy validated and applied
(groups that already exist are adopted: only differing files are written) -> periodic jobs.
Signals: SIGHUP reloads the policy (a bad one is rejected, the old one stays), SIGTERM and
SIGINT stop cleanly after the job in progress.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from governor.config import Config
from governor.enforce.cli import db_recorder, open_cgroup
from governor.enforce.keeper import Enforcer, PolicyWatcher

log = logging.getLogger("governor.daemon")

#: how often the policy files are checked for changes (a stat per file)
WATCH_INTERVAL = 1.0


@dataclass
class Daemon:
    cfg: Config
    stop_event: threading.Event = field(default_factory=threading.Event)
    reload_event: threading.Event = field(default_factory=threading.Event)
    #: extra periodic jobs other parts register: (name, seconds, function)
    jobs: list[tuple[str, float, Callable[[], Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fs = open_cgroup(self.cfg)
        recorder, why = db_recorder(self.cfg)
        if recorder is None:
            log.warning("applied policies are logged, not stored", extra={"reason": why})
        self.enforcer = Enforcer(self.fs, self.cfg.subtree, self.cfg.policy,
                                 iocost_devices=self.cfg.iocost_devices, recorder=recorder)
        self.watcher = PolicyWatcher(self.cfg.policy)
        self.scheduler = BackgroundScheduler(timezone="UTC", job_defaults={
            "max_instances": 1, "coalesce": True, "misfire_grace_time": None})

    # -- jobs ----------------------------------------------------------------------------
    def _watch(self) -> None:
        if self.watcher.changed():
            log.info("policy files changed", extra={"path": self.cfg.policy})
            self.reload_event.set()

    def _reconcile(self) -> None:
        try:
            self.enforcer.reconcile()
        except Exception:
            log.exception("reconcile pass failed")

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.reload_event.set()
        else:
            self.stop_event.set()

    def run(self) -> int:
        if not self.enforcer.reload(trigger="start"):
            log.error("no valid policy to start with", extra={"path": self.cfg.policy})
            return 1
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.scheduler.add_job(self._reconcile, "interval", id="reconcile",
                               seconds=self.cfg.reconcile_interval)
        self.scheduler.add_job(self._watch, "interval", id="policy-watch",
                               seconds=WATCH_INTERVAL)
        for name, seconds, fn in self.jobs:
            self.scheduler.add_job(fn, "interval", id=name, seconds=seconds)
        self.scheduler.start()
        log.info("governor running", extra={
            "subtree": self.cfg.subtree, "policy": self.cfg.policy,
            "reconcile_interval": self.cfg.reconcile_interval})
        try:
            while not self.stop_event.is_set():
                if self.reload_event.wait(0.2):
                    self.reload_event.clear()
                    self.enforcer.reload(trigger="reload")
        finally:
            self.scheduler.shutdown(wait=True)
            log.info("governor stopped")
            self.fs.close()
        return 0
