# Types of the optional C accelerator of the meter (governor/metering/_fastmeter.c).
from typing import Any, Final

N_COUNTERS: Final[int]
N_QUANTITIES: Final[int]

def configure(interval_type: type[tuple[Any, ...]], /) -> None: ...
def interval(prev: Any, cur: Any, /) -> Any: ...
def rollup_add(rollups: dict[Any, list[int]], rkey: Any, covered_us: int,
               quantities: tuple[int | None, ...], /) -> None: ...
