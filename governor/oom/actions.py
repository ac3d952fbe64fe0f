"""What governor does when a group OOMs: the policy's ``oom.actions`` per group.

* ``log``: one structured log line per event (kind, count, victim).
* ``alert``: a JSON POST to ``[oom] webhook_url``, from a worker thread with a bounded
  queue: :meth:`WebhookAlerter.submit` never blocks (a full queue drops the alert and counts
  it), each delivery has a timeout and is retried with exponential backoff on network errors
  and 5xx answers (a 4xx answer is final).
* ``restart``: the restart itself is done by whatever started the process.  ``governor
  launch`` supervises its command: when a run ends by an OOM kill (SIGKILL while the
  group's ``oom_kill`` counter went up) it starts it again after ``oom.restart_backoff``
  (doubled each time) at most ``oom.restart_max`` times (:mod:`governor.placement.launch`).
  In the daemon the action is counted, and a program that embeds governor can subscribe
  with :meth:`OomActions.on_oom` to get ``callback(group_path, event)`` for every kill in a
  ``restart`` group; a callback that raises is logged and does not affect the others.

``oom.group_kill`` is not an action here: enforcement writes it as ``memory.oom.group``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from governor.errors import ConfigError
from governor.oom.events import KILL_KINDS, WARNING_KINDS, OomEvent
from governor.policy.model import OomSettings

log = logging.getLogger("governor.oom")

OomHook = Callable[[str, OomEvent], None]


class WebhookAlerter:
    """Delivers JSON documents to ``url`` from one worker thread."""

    def __init__(self, url: str, *, timeout: float = 5.0, retries: int = 3,
                 backoff: float = 0.5, max_queue: int = 1000) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{url!r}: the webhook URL must be http:// or https://",
                              key="oom.webhook_url")
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.results: Counter[str] = Counter()  # ok / failed / dropped
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="governor-oom-webhook",
                                        daemon=True)
        self._thread.start()

    def submit(self, doc: dict[str, Any]) -> bool:
        """Queue ``doc`` for delivery; False (and counted as dropped) when the queue is full."""
        try:
            self._q.put_nowait(doc)
        except queue.Full:
            self.results["dropped"] += 1
            log.error("oom alert dropped: webhook queue full", extra={"url": self.url})
            return False
        return True

    def pending(self) -> int:
        return self._q.qsize()

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (within ``timeout``, backoffs included), then end the
        worker; past ``timeout`` the daemon thread is abandoned with what is left."""
        with contextlib.suppress(queue.Full):
            self._q.put(None, timeout=timeout)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            doc = self._q.get()
            if doc is None:
                return
            self._deliver(doc)

    def _post(self, body: bytes) -> int:
        # the scheme was checked in __init__ (http/https only)
        req = urllib.request.Request(self.url, data=body, method="POST", headers={  # noqa: S310
            "Content-Type": "application/json", "User-Agent": "governor"})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
            return int(resp.status)

    def _deliver(self, doc: dict[str, Any]) -> bool:
        body = json.dumps(doc, sort_keys=True, default=str).encode()
        for attempt in range(self.retries + 1):
            try:
                self._post(body)
            except urllib.error.HTTPError as e:
                if 400 <= e.code < 500:
                    self.results["failed"] += 1
                    log.error("oom alert refused", extra={"url": self.url, "status": e.code})
                    return False
                why = f"HTTP {e.code}"
            except (urllib.error.URLError, OSError) as e:
                why = str(getattr(e, "reason", e))
            else:
                self.results["ok"] += 1
                return True
            if attempt < self.retries:
                delay = self.backoff * 2 ** attempt
                log.warning("oom alert failed, retrying", extra={
                    "url": self.url, "error": why, "attempt": attempt + 1, "delay": delay})
                self._stop.wait(delay)
            else:
                log.error("oom alert failed", extra={"url": self.url, "error": why,
                                                     "attempts": attempt + 1})
        self.results["failed"] += 1
        return False


class OomActions:
    """Runs the actions of each group's :class:`OomSettings` for the events it is given."""

    def __init__(self, *, alerter: WebhookAlerter | None = None,
                 warn_every: float = 60.0) -> None:
        self.alerter = alerter
        self.settings: Mapping[str, OomSettings] = {}
        self._hooks: list[OomHook] = []
        self.counts: Counter[str] = Counter()  # action -> times run ("suppressed" too)
        #: warnings (``high``, ``pressure``) log and alert at most once per group and kind
        #: in this many seconds: a group throttled over memory.high changes its ``high``
        #: counter all the time.  Kills are never held back.  Every event is still
        #: recorded in the database and counted in the metrics.
        self.warn_every = warn_every
        self._last_warning: dict[tuple[str, str], float] = {}

    def set_settings(self, settings: Mapping[str, OomSettings]) -> None:
        self.settings = dict(settings)

    def on_oom(self, callback: OomHook) -> Callable[[], None]:
        """Subscribe ``callback(group_path, event)`` to kills in ``restart`` groups.

        Returns a function that unsubscribes it.
        """
        self._hooks.append(callback)
        return lambda: self._hooks.remove(callback)

    def handle(self, event: OomEvent) -> None:
        if event.kind not in KILL_KINDS and event.kind not in WARNING_KINDS:
            return
        actions = self._actions(event.path)
        warning = event.kind in WARNING_KINDS
        if warning and ("log" in actions or "alert" in actions):
            now = time.monotonic()
            last = self._last_warning.get((event.path, event.kind))
            if last is not None and now - last < self.warn_every:
                self.counts["suppressed"] += 1
                return
            self._last_warning[(event.path, event.kind)] = now
        if "log" in actions:
            self.counts["log"] += 1
            level = logging.WARNING
            log.log(level, "memory pressure warning" if warning else "oom kill",
                    extra=event.as_dict())
        if "alert" in actions and self.alerter is not None:
            self.counts["alert"] += 1
            self.alerter.submit({"source": "governor", "type": "warning" if warning else "oom",
                                 **event.as_dict()})
        if "restart" in actions and not warning and not event.missed_while_down:
            self.counts["restart"] += 1
            for hook in list(self._hooks):
                try:
                    hook(event.path, event)
                except Exception:
                    log.exception("oom restart hook failed", extra={"group": event.path})

    def _actions(self, path: str) -> tuple[str, ...]:
        s = self.settings.get(path)
        return () if s is None else tuple(s.actions)
