# Types of the optional C accelerator of the meter (governor/metering/_fastmeter.c).
from typing import Any, Final

N_COUNTERS: Final[int]
N_QUANTITIES: Final[int]

def configure(interval_type: type[tuple[Any, ...]], /) -> None: ...
def interval(prev: Any, cur: Any, /) -> Any: ...
def rollup_add(rollups: dict[Any, list[int]], rkey: Any, covered_us: int,
               quantities: tuple[int | None, ...], /) -> None: ...
def step_into(samples: list[Any], last: dict[Any, Any], ids: Any, span: dict[Any, Any],
              acc: dict[Any, Any], done: list[Any], anchors: dict[Any, Any],
              pending_anchors: dict[Any, Any], vseries: dict[Any, Any],
              vprev: dict[Any, Any], hour_floor: Any, hour: Any, /
              ) -> tuple[list[Any], int, int]: ...
