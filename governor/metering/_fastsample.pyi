# Types of the optional C accelerator governor/metering/_fastsample.c: the mapping of a
# group's raw values onto its GroupSample and the sampling pass's fast-tier loop
# (governor/metering/sampler.py's to_sample_at and Sampler.sample, in C).
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

def configure_sample(*, sample_type: type, sample_fields: tuple[str, ...],
                     py_to_sample: Callable[..., Any]) -> None:
    """GroupSample, its field names in order, and the Python to_sample_at (the fallback
    for anything the C mapping does not handle)."""
def to_sample(st: Any, node: str, path: str, started: datetime, t0: float, mono: float,
              created: datetime | None, /) -> Any:
    """sampler.to_sample_at in C: the GroupSample of the GroupStats ``st``."""
def sample_groups(paths: list[str], start: int, groups: Mapping[str, Any],
                  read: Callable[[tuple[int, ...], list[Any], int], Any],
                  prefix: str | dict[str, str],
                  latest: dict[str, Any], created: dict[str, Any], births: dict[str, Any],
                  node: str, started: datetime, t0: float, samples: list[Any],
                  hook: Callable[[str], object] | None, end: int = ..., /) -> int:
    """Sampler.sample's loop over paths[start:end] for the groups whose StatReader entry
    (``groups``: StatReader.entries, a dict) has its fast descriptors, each read with
    ``read`` (StatReader.fast_read); the index of the first group left to the caller."""
