"""What governor does when a group OOMs: the policy's ``oom.actions`` per group.

* ``log``: one structured log line per event (kind, count, victim).
* ``alert``: a JSON POST to ``[oom] webhook_url``, from a worker thread with a bounded
  queue: :meth:`WebhookAlerter.submit` never blocks (a full queue drops the alert and counts
  it), each delivery has a timeout and is retried with exponential backoff on network errors
  and 5xx answers (a 4xx answer is final).  The backoff doubles up to ``max_backoff``
  (300 s) and never grows past it, whatever the number of retries; :meth:`WebhookAlerter.stop`
  ends a backoff wait at once.  Credentials in the URL (``https://user:token@host/...``) are
  sent as an ``Authorization: Basic`` header, and the URL is logged as
  :func:`redact_url` shows it (no userinfo, no query values).
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

import base64
import contextlib
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from governor.errors import ConfigError
from governor.log import MASK, mask_secrets
from governor.oom.events import KILL_KINDS, WARNING_KINDS, OomEvent
from governor.policy.model import OomSettings

log = logging.getLogger("governor.oom")

OomHook = Callable[[str, OomEvent], None]


#: the longest wait between two attempts of one delivery, seconds
MAX_BACKOFF = 300.0


def redact_url(url: str) -> str:
    """``url`` as it may be logged: ``scheme://host[:port]/path``, credentials replaced by
    ``***`` and every query value too (a token is often there); the fragment dropped."""
    try:
        u = urllib.parse.urlsplit(url)
        host = u.hostname or ""
        port = f":{u.port}" if u.port is not None else ""
    except ValueError:
        return mask_secrets(url.split("?", 1)[0])
    if ":" in host:
        host = f"[{host}]"
    netloc = (f"{MASK}@" if u.username is not None or u.password is not None else "") + \
        host + port
    query = "&".join(f"{k}={MASK}" for k, _ in urllib.parse.parse_qsl(
        u.query, keep_blank_values=True))
    return urllib.parse.urlunsplit((u.scheme, netloc, u.path, query, ""))


def backoff_delay(base: float, attempt: int, cap: float = MAX_BACKOFF) -> float:
    """``base * 2**attempt`` seconds, at most ``cap``: computed without overflow for any
    ``attempt`` (``base * 2 ** 1024`` is an OverflowError, and a wait longer than
    ``threading.TIMEOUT_MAX`` one too)."""
    return min(base * 2.0 ** min(max(attempt, 0), 64), cap)


class WebhookAlerter:
    """Delivers JSON documents to ``url`` from one worker thread."""

    def __init__(self, url: str, *, timeout: float = 5.0, retries: int = 3,
                 backoff: float = 0.5, max_backoff: float = MAX_BACKOFF,
                 max_queue: int = 1000) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{redact_url(url)!r}: the webhook URL must be http:// or "
                              "https://", key="oom.webhook_url")
        parts = urllib.parse.urlsplit(url)
        self._auth: str | None = None
        if parts.username is not None or parts.password is not None:
            # urllib does not send a URL's userinfo: it goes as a Basic header, the URL
            # without it
            cred = f"{urllib.parse.unquote(parts.username or '')}:" \
                   f"{urllib.parse.unquote(parts.password or '')}"
            self._auth = "Basic " + base64.b64encode(cred.encode()).decode()
            netloc = parts.netloc.rpartition("@")[2]
            url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
        self._target = url
        #: the URL as logs show it (:func:`redact_url`)
        self.url = redact_url(url if self._auth is None else
                              urllib.parse.urlunsplit(parts))
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.results: Counter[str] = Counter()  # ok / failed / dropped
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=max_queue)
        self._stop = threading.Event()
        self._deadline: float | None = None  # monotonic; set by stop()
        self._thread = threading.Thread(target=self._run, name="governor-oom-webhook",
                                        daemon=True)
        self._thread.start()

    def submit(self, doc: dict[str, Any]) -> bool:
        """Queue ``doc`` for delivery; False (and counted as dropped) when the queue is full
        or the alerter is stopping."""
        if self._stop.is_set():
            self.results["dropped"] += 1
            return False
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
        """Deliver what is queued within ``timeout`` seconds (retries included, as long as
        their backoff ends before it), then end the worker.  Returns within ``timeout``
        (plus at most one attempt's ``timeout`` already under way): a backoff wait is
        cut short, a retry that would end past the deadline is not made, and what is
        still queued then is dropped (counted) and the worker ends."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        with contextlib.suppress(queue.Full):  # full: the worker is busy and sees the stop
            self._q.put_nowait(None)
        self._thread.join(max(0.0, self._deadline - time.monotonic()) + 0.05)

    def _past_deadline(self, extra: float = 0.0) -> bool:
        d = self._deadline
        return d is not None and time.monotonic() + extra > d

    def _run(self) -> None:
        while True:
            if self._stop.is_set():
                try:
                    doc = self._q.get_nowait()
                except queue.Empty:
                    return
            else:
                doc = self._q.get()
            if doc is None:
                if self._stop.is_set() and self._q.empty():
                    return
                continue
            if self._past_deadline():
                left = 1
                with contextlib.suppress(queue.Empty):
                    while True:
                        left += self._q.get_nowait() is not None
                self.results["dropped"] += left
                log.error("oom alerts not delivered: stopping", extra={
                    "url": self.url, "alerts": left})
                return
            try:
                self._deliver(doc)
            except Exception:  # the worker must outlive any one delivery
                self.results["failed"] += 1
                log.exception("oom alert failed", extra={"url": self.url})

    def _post(self, body: bytes) -> int:
        headers = {"Content-Type": "application/json", "User-Agent": "governor"}
        if self._auth is not None:
            headers["Authorization"] = self._auth
        # the scheme was checked in __init__ (http/https only)
        req = urllib.request.Request(self._target, data=body, method="POST",  # noqa: S310
                                     headers=headers)
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
            return int(resp.status)

    def _pause(self, delay: float) -> bool:
        """Wait ``delay`` seconds before a retry; False when stopping and the retry would
        come after stop()'s deadline (the wait then ends at once)."""
        end = time.monotonic() + delay
        while True:
            if self._deadline is not None and end > self._deadline:
                return False
            left = end - time.monotonic()
            if left <= 0:
                return True
            if self._stop.is_set():
                time.sleep(left)  # within the deadline: still worth the retry
                return True
            self._stop.wait(left)  # stop() ends this wait at once

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
                why = mask_secrets(str(getattr(e, "reason", e)))
            else:
                self.results["ok"] += 1
                return True
            if attempt < self.retries:
                delay = backoff_delay(self.backoff, attempt, self.max_backoff)
                log.warning("oom alert failed, retrying", extra={
                    "url": self.url, "error": why, "attempt": attempt + 1, "delay": delay})
                if self._pause(delay):
                    continue
                log.error("oom alert failed: not retried, stopping", extra={
                    "url": self.url, "error": why, "attempts": attempt + 1})
                break
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
