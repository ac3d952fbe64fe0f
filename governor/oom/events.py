"""The OOM event: what the watcher produces and the store, actions and CLI consume."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

#: memory.events keys watched (Documentation/admin-guide/cgroup-v2.rst, memory.events)
COUNTER_KINDS: Final = ("oom", "oom_kill", "oom_group_kill", "max", "high")
#: kinds that are kills (victims are looked up in the kernel log for them)
KILL_KINDS: Final = frozenset({"oom_kill", "oom_group_kill"})
#: early warnings: a PSI trigger on memory.pressure fired, or memory.high was hit
PRESSURE: Final = "pressure"
WARNING_KINDS: Final = frozenset({PRESSURE, "high"})
ALL_KINDS: Final = (*COUNTER_KINDS, PRESSURE)


@dataclass(frozen=True, slots=True)
class OomEvent:
    """``count`` new occurrences of ``kind`` in one group incarnation.

    For the memory.events kinds ``count`` is the counter delta, so the recorded counts of an
    incarnation add up to the kernel's counter.  ``pid``/``comm``/``rss_bytes`` name the
    victim of a kill when the kernel log gave it (one event per victim, count 1; a remainder
    without details keeps the rest of the delta).  ``missed_while_down``: the delta happened
    while governor was not running (found at start from the stored totals).
    """

    node: str
    tenant: str
    group: str | None
    cgroup_id: int
    ts: datetime
    kind: str
    count: int
    pid: int | None = None
    comm: str | None = None
    rss_bytes: int | None = None
    missed_while_down: bool = False

    @property
    def path(self) -> str:
        return self.tenant if self.group is None else f"{self.tenant}/{self.group}"

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "tenant": self.tenant, "group": self.group,
                "path": self.path, "cgroup_id": self.cgroup_id, "ts": self.ts.isoformat(),
                "kind": self.kind, "count": self.count, "pid": self.pid, "comm": self.comm,
                "rss_bytes": self.rss_bytes, "missed_while_down": self.missed_while_down}
