"""The mapping of a group's raw values (:class:`~governor.cgroupfs.reader.GroupStats`) onto
the store's :class:`~governor.metering.sample.GroupSample`, with no arithmetic:
:func:`to_sample`, and :data:`C_TO_SAMPLE`, its C twin (``governor.metering._fastsample``)
when the accelerator is built (tests/unit/test_fastsample.py compares the two).  The
sampler (:mod:`governor.metering.sampler`) calls them for each group it reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

from governor.accel import load
from governor.cgroupfs.reader import GroupStats
from governor.metering.sample import IO_FIELDS, GroupSample, IoCounters

_EMPTY: Mapping[str, int] = {}
_PSI_NAMES = {res: (f"{res}_some", f"{res}_full") for res in ("cpu", "memory", "io")}

#: GroupSample's fields in the order of its dataclass fields, as to_sample lists them
_SAMPLE_FIELDS = (
    "node", "tenant", "group", "cgroup_id", "wall", "monotonic",
    "cpu_usage_usec", "cpu_user_usec", "cpu_system_usec", "cpu_nr_periods",
    "cpu_nr_throttled", "cpu_throttled_usec",
    "memory_current", "memory_peak", "memory_swap_current",
    "memory_events_low", "memory_events_high", "memory_events_max", "memory_events_oom",
    "memory_events_oom_kill", "memory_events_oom_group_kill",
    "memory_stat_anon", "memory_stat_file", "memory_stat_kernel", "memory_stat_sock",
    "memory_stat_shmem", "pids_current", "io", "psi", "created", "storage_bytes",
    "values")
if tuple(f.name for f in dataclasses.fields(GroupSample)) != _SAMPLE_FIELDS:
    raise ImportError("governor.metering.tosample: _SAMPLE_FIELDS is not GroupSample's "
                      "fields in order")
#: a setter for each field (its slot's member descriptor: GroupSample has __slots__)
_SAMPLE_SETTERS = tuple(getattr(GroupSample, name).__set__ for name in _SAMPLE_FIELDS)
_new = object.__new__
#: the slot's member descriptor sets the frozen sample's generic values (as storage.py's)
set_values = getattr(GroupSample, "values").__set__  # noqa: B009 (the descriptor)


def _make_sample(values: Sequence[object]) -> GroupSample:
    """``GroupSample(*values)`` (values of all the fields, in order) at a fifth of the cost:
    the frozen dataclass's ``__init__`` goes through ``object.__setattr__`` for each of its
    32 fields, here each slot is set directly; ``__post_init__`` still checks the values.
    (tests/unit/test_sampler.py compares the two.)"""
    if len(values) != len(_SAMPLE_SETTERS):
        raise TypeError(f"GroupSample takes {len(_SAMPLE_SETTERS)} values, not {len(values)}")
    sample: GroupSample = _new(GroupSample)
    for set_slot, value in zip(_SAMPLE_SETTERS, values):  # noqa: B905 (lengths checked)
        set_slot(sample, value)
    sample.__post_init__()
    return sample


def to_sample(st: GroupStats, *, node: str, path: str, wall: datetime, mono: float,
              created: datetime | None = None) -> GroupSample:
    """Map the reader's raw values onto the store's sample shape (no arithmetic)."""
    tenant, _, group = path.partition("/")
    cpu = (st.cpu or _EMPTY).get
    ev = (st.memory_events or _EMPTY).get   # None (absent) and {} both give None values
    ms = (st.memory_stat or _EMPTY).get
    io: dict[str, IoCounters] = {}
    if st.io:
        for dev, c in st.io.items():
            io[dev] = IoCounters(**{k: int(c.get(k, 0)) for k in IO_FIELDS})  # type: ignore[typeddict-item]
    psi: dict[str, int] = {}
    for res, p in st.psi.items():
        names = _PSI_NAMES.get(res) or (f"{res}_some", f"{res}_full")
        psi[names[0]] = p.some.total
        if p.full is not None:
            psi[names[1]] = p.full.total
    return _make_sample((
        node, tenant, group or None, st.cgroup_id, wall, mono,
        cpu("usage_usec"), cpu("user_usec"), cpu("system_usec"), cpu("nr_periods"),
        cpu("nr_throttled"), cpu("throttled_usec"),
        st.memory_current, st.memory_peak, st.swap_current,
        ev("low"), ev("high"), ev("max"), ev("oom"), ev("oom_kill"), ev("oom_group_kill"),
        ms("anon"), ms("file"), ms("kernel"), ms("sock"), ms("shmem"),
        st.pids_current, io, psi, created,
        None,    # storage_bytes: not a cgroup file; set by the pass after (see GroupSample)
        None))   # values: the generic controllers', set by the pass after (see GroupSample)


def to_sample_at(  # noqa: PLR0917 (positional: the C accelerator's fallback call)
        st: GroupStats, node: str, path: str, started: datetime, t0: float, mono: float,
        created: datetime | None) -> GroupSample:
    """:func:`to_sample` of a group read at ``mono`` in a pass that started at ``started``
    (wall) and ``t0`` (monotonic): the sampler's call, and the C accelerator's fallback."""
    return to_sample(st, node=node, path=path, wall=started + timedelta(seconds=mono - t0),
                     mono=mono, created=created)


SampleMaker = Callable[[GroupStats, str, str, datetime, float, float, datetime | None],
                       GroupSample]


#: the mapping onto GroupSample and the fast tier's loop in C
#: (governor/metering/_fastsample.c), or None
FASTSAMPLE = load("governor.metering._fastsample")


def _c_to_sample() -> SampleMaker | None:
    if FASTSAMPLE is None:
        return None
    FASTSAMPLE.configure_sample(sample_type=GroupSample, sample_fields=_SAMPLE_FIELDS,
                                 py_to_sample=to_sample_at)
    maker: SampleMaker = FASTSAMPLE.to_sample
    return maker



#: the C :func:`to_sample_at` when the accelerator is in use, else None
C_TO_SAMPLE: SampleMaker | None = _c_to_sample()
