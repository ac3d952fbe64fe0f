"""What placement counts, for the exporter and the daemon: decisions by result, connector
events and the time spent handling them, rescans and overflows, the listener's nice and its
keep_warm writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

#: results counted in :class:`Counters`
RESULTS: Final = ("moved", "already", "gone", "error", "excluded")


@dataclass
class Counters:
    """Plain counters for the exporter.  ``placements`` counts decisions by result:
    ``moved``; ``already`` (decided, and the kernel had already put it there, e.g. a child
    inheriting its parent's group); ``gone`` (exited or pid reused before the move);
    ``error`` (the write failed otherwise); ``excluded`` (a rule matched but the process is
    in an excluded cgroup).  ``events`` counts connector events by kind."""

    placements: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESULTS, 0))
    events: dict[str, int] = field(default_factory=dict)
    rescans: int = 0
    overflows: int = 0
    handle_seconds: float = 0.0   # Python time spent handling events (for the mean)
    handle_max_seconds: float = 0.0
    #: the same by event kind ("exec", "fork", ...)
    handle_seconds_by_event: dict[str, float] = field(default_factory=dict)
    handle_max_seconds_by_event: dict[str, float] = field(default_factory=dict)
    connector: bool = False
    listener_nice: int | None = None  # the listener thread's nice once it was set
    keep_warm_writes: int = 0         # no-op migrations that kept moves fast
    keep_warm_errors: int = 0
    keep_warm_windows: int = 0        # windows opened (moves at keep_warm_min_rate or more)

    def as_dict(self) -> dict[str, object]:
        return {"placements": dict(self.placements), "events": dict(self.events),
                "rescans": self.rescans, "overflows": self.overflows,
                "handle_seconds": self.handle_seconds,
                "handle_max_seconds": self.handle_max_seconds,
                "handle_seconds_by_event": dict(self.handle_seconds_by_event),
                "handle_max_seconds_by_event": dict(self.handle_max_seconds_by_event),
                "connector": self.connector, "listener_nice": self.listener_nice,
                "keep_warm_writes": self.keep_warm_writes,
                "keep_warm_errors": self.keep_warm_errors,
                "keep_warm_windows": self.keep_warm_windows}
