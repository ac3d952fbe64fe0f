"""The exporter's C accelerator (governor.exporter._fastrender) against its Python twin.

``family`` must write, for the same rows, exactly the text ``family_py`` writes: every
kind, values missing in every way (attribute None, dict None, key absent, PSI resource or
``full`` line absent), integers up to and beyond 64 bits, microsecond values on both sides
of the exact-decimal bounds of the C code's seconds formatting, and labels with escapes
and non-ASCII text; the writable layers' bytes read from GroupSample rows (issue #19).  The
whole exposition is compared too (render() with the accelerator against the same render
with the twin), and bad rows raise, as the Python loop does.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest

from governor.cgroupfs.parse import Psi, PsiLine
from governor.cgroupfs.reader import GroupStats
from governor.exporter import families, render
from governor.exporter.families import (
    KIND_ATTR,
    KIND_DICT,
    KIND_DICT_USEC,
    KIND_ITEM,
    KIND_PSI_FULL,
    KIND_PSI_SOME,
    family_py,
)
from governor.metering.sample import GroupSample

pytestmark = pytest.mark.skipif(
    families.ACCELERATED is None,
    reason="governor.exporter._fastrender not in use (not built: pip install -e .; or "
    "GOVERNOR_PURE_PYTHON=1)")

#: microsecond values around the bounds of the C exact-decimal path, and odd ones
EDGES = [0, 1, 5, 50, 99, 100, 101, 999, 1000, 123456, 999_999, 1_000_000, 1_000_001,
         (1 << 33) * 1_000_000 - 1, (1 << 33) * 1_000_000, (1 << 33) * 1_000_000 + 7,
         (1 << 53) - 1, 1 << 53, (1 << 53) + 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1,
         1 << 70, 10**16, 10**16 + 1, 10**22]


def _value(rnd: random.Random) -> int:
    r = rnd.random()
    if r < 0.3:
        return rnd.choice(EDGES)
    if r < 0.6:
        return rnd.randrange(0, 10**7)
    if r < 0.9:
        return rnd.randrange(0, 1 << 64)
    return rnd.randrange(0, 1 << 80)


def _psi(rnd: random.Random) -> Psi:
    def line() -> PsiLine:
        return PsiLine(rnd.random() * 100, rnd.random() * 100, rnd.random() * 100,
                       _value(rnd))
    return Psi(some=line(), full=line() if rnd.random() < 0.7 else None)


def _stats(rnd: random.Random) -> GroupStats:
    def maybe_dict(keys: tuple[str, ...]) -> dict[str, int] | None:
        if rnd.random() < 0.15:
            return None
        return {k: _value(rnd) for k in keys if rnd.random() < 0.85}
    return GroupStats(
        cgroup_id=rnd.randrange(1, 1 << 40),
        cpu=maybe_dict(("usage_usec", "user_usec", "system_usec", "nr_periods",
                        "nr_throttled", "throttled_usec")),
        memory_current=None if rnd.random() < 0.2 else _value(rnd),
        memory_peak=None if rnd.random() < 0.2 else _value(rnd),
        swap_current=None if rnd.random() < 0.2 else _value(rnd),
        memory_events=maybe_dict(("low", "high", "max", "oom", "oom_kill", "oom_group_kill")),
        io={f"{rnd.randrange(300)}:{rnd.randrange(16)}": {
            k: _value(rnd) for k in ("rbytes", "wbytes", "rios", "wios", "dbytes")
            if rnd.random() < 0.9} for _ in range(rnd.randrange(3))},
        pids_current=None if rnd.random() < 0.2 else _value(rnd),
        psi={res: _psi(rnd) for res in ("cpu", "memory", "io") if rnd.random() < 0.8},
    )


LABELS = ['group="web",node="n1",tenant="acme"} ', 'group="",node="n1",tenant="acme"} ',
          'group="a\\\\b\\"c\\nd",node="n1",tenant="t"} ',
          'group="grüße-日本",node="n1",tenant="ü"} ', "}", ""]

FAMILIES: list[tuple[int, str, str | None]] = [
    (KIND_DICT_USEC, "cpu", "usage_usec"), (KIND_DICT_USEC, "cpu", "throttled_usec"),
    (KIND_DICT, "cpu", "nr_periods"), (KIND_ATTR, "memory_current", None),
    (KIND_ATTR, "pids_current", None), (KIND_DICT, "memory_events", "oom_kill"),
    (KIND_PSI_SOME, "psi", "cpu"), (KIND_PSI_FULL, "psi", "memory"),
    (KIND_PSI_SOME, "psi", "io"), (KIND_PSI_FULL, "psi", "cpu"),
]


@pytest.mark.parametrize("seed", range(20))
def test_every_kind_writes_what_the_python_twin_writes(seed: int) -> None:
    rnd = random.Random(seed)
    rows = [(rnd.choice(LABELS) + str(i), _stats(rnd)) for i in range(rnd.randrange(0, 60))]
    assert families.ACCELERATED is not None
    for kind, attr, key in FAMILIES:
        prefix = rnd.choice(["governor_x{", "g{", ""])
        want = family_py(prefix, rows, kind, attr, key)
        assert families.ACCELERATED(prefix, rows, kind, attr, key) == want, (kind, attr, key)
    io_rows: list[tuple[str, Any]] = [(lbl, c) for lbl, st in rows for c in (st.io or {}).values()]
    for key in ("rbytes", "wbytes", "rios", "wios", "dbytes"):
        assert families.ACCELERATED("io{", io_rows, KIND_ITEM, "", key) == \
            family_py("io{", io_rows, KIND_ITEM, "", key)


def _sample(rnd: random.Random, i: int) -> GroupSample:
    """A sample with the writable layers' bytes: None (none measured) or any int."""
    return GroupSample(node="n1", tenant="t", group=f"g{i}", cgroup_id=i,
                       wall=datetime(2026, 12, 6, tzinfo=UTC), monotonic=1.0,
                       storage_bytes=None if rnd.random() < 0.3 else _value(rnd))


@pytest.mark.parametrize("seed", range(10))
def test_the_storage_family_reads_samples_as_the_twin(seed: int) -> None:
    rnd = random.Random(seed)
    rows = [(rnd.choice(LABELS) + str(i), _sample(rnd, i)) for i in range(rnd.randrange(0, 60))]
    assert families.ACCELERATED is not None
    want = family_py("governor_storage_bytes{", rows, KIND_ATTR, "storage_bytes", None)
    got = families.ACCELERATED("governor_storage_bytes{", rows, KIND_ATTR, "storage_bytes",
                               None)
    assert got == want
    assert want.count("\n") + bool(want) == sum(s.storage_bytes is not None for _, s in rows)


def test_seconds_are_repr_of_the_value_over_a_million_on_both_sides_of_the_bounds() -> None:
    assert families.ACCELERATED is not None
    for v in EDGES + list(range(2000)) + [10**k + d for k in range(2, 19) for d in (-1, 0, 1)]:
        got = families.ACCELERATED("", [("", {"x": v})], KIND_ITEM, "", "x")
        assert got == str(v)
        st = GroupStats(cgroup_id=1, cpu={"usage_usec": v})
        got = families.ACCELERATED("", [("", st)], KIND_DICT_USEC, "cpu", "usage_usec")
        assert got == repr(v / 1e6), v


def test_no_row_with_a_value_gives_no_text() -> None:
    assert families.ACCELERATED is not None
    empty = GroupStats(cgroup_id=1)
    for kind, attr, key in FAMILIES:
        assert families.ACCELERATED("p{", [("l", empty)], kind, attr, key) == ""
        assert families.ACCELERATED("p{", [], kind, attr, key) == ""


def test_bad_rows_raise_as_the_python_loop_does() -> None:
    assert families.ACCELERATED is not None
    fam = families.ACCELERATED
    with pytest.raises(TypeError, match="row 1 is not a"):
        fam("p{", [("l", GroupStats(cgroup_id=1)), ("only one",)], KIND_ATTR,  # type: ignore[list-item]
            "memory_current", None)
    with pytest.raises(TypeError, match="expected an int"):
        fam("p{", [("l", GroupStats(cgroup_id=1, memory_current=1.5))],  # type: ignore[arg-type]
            KIND_ATTR, "memory_current", None)
    with pytest.raises(AttributeError):
        fam("p{", [("l", object())], KIND_ATTR, "memory_current", None)
    with pytest.raises(ValueError, match="unknown kind"):
        fam("p{", [], 99, "x", None)
    with pytest.raises(TypeError):
        fam("p{", [("l", {"x": 1})], KIND_ITEM, "", [])  # type: ignore[arg-type]


def test_the_whole_exposition_is_the_same_with_the_twin(
        monkeypatch: pytest.MonkeyPatch) -> None:
    rnd = random.Random(7)
    groups = {f"t{i % 5}/g{i}" if i % 7 else f"t{i % 5}": _stats(rnd) for i in range(300)}
    samples = {path: _sample(rnd, i) for i, path in enumerate(groups)}
    health = render.Health(pass_duration=0.5, last_success=1.0, groups_sampled=300,
                           placements={}, reloads={}, drift={}, enforce_write_errors=0,
                           db_write_errors=0, spool_depth=0, alerts={})
    snap = render.Snapshot(node="n1", groups=groups, samples=samples, limits={}, costs={},
                           pressure_warnings={}, health=health)
    fast = render.render(snap)
    monkeypatch.setattr(render, "family", family_py)
    assert render.render(snap) == fast
    assert fast.count(b"\n") > 3000 and b"governor_storage_bytes{" in fast
