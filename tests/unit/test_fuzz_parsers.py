"""The fuzz bench (bench/fuzz.py, issue #15 Proof) kept alive in CI: every target (the
policy loader, every kernel-file parser, and the C readers against the Python ones when
the accelerator is built) over a few hundred inputs from the bench's own generator and
from Hypothesis.  No input may raise anything but the parser's documented error.  The
100,000-case runs are ``.venv/bin/python bench/fuzz.py --cases 100000``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings

pytestmark = pytest.mark.fuzz


def _bench() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "fuzz.py"
    spec = importlib.util.spec_from_file_location("governor_bench_fuzz", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


fz = _bench()
C_BUILT = fz.procfs._c is not None and fz.R.ACCELERATED
TARGETS = [pytest.param(t, id=t.name, marks=pytest.mark.skipif(
    t.needs_c and not C_BUILT, reason="the C accelerator is not built (pip install -e .)"))
    for t in fz.TARGETS]


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_never_crashes(target: object) -> None:
    res = fz.fuzz(target, 300, 15)
    assert res.crash is None, f"{res.crash!r}\n{res.error}"
    assert res.cases == 300


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_never_crashes_under_hypothesis(target: object) -> None:
    @settings(max_examples=40, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(target.inputs())  # type: ignore[attr-defined]
    def case(data: bytes) -> None:
        target.run(data)  # type: ignore[attr-defined]
    case()


@pytest.mark.parametrize(("target", "data"), [
    ("parse_mountinfo", b"1 2 0:1 / /x\\999 rw - tmpfs t rw\n"),  # not octal: kept as is
    ("parse_io_stat_bytes", b"8:0 rbytes=" + b"9" * 5000 + b" wbytes=1 rios=1 wios=1 "
     b"dbytes=1 dios=1\n"),                                       # past int()'s digits
    ("FlatKeyedBytes", b"usage_usec " + b"9" * 5000 + b"\n"),
    ("c-read_fast:memory.current", b"9" * 5000 + b"\n"),
    ("c-proc_stat", "(c)\u2028 1 1 1 0 1 4 9 0 0 0 0 0 0 0 0 0 1 0 1 1".encode()),
    ("c-proc_stat", b"1 (c) R " + b"9" * 30 + b" 1 1 0 1 4 9 0 0 0 0 0 0 0 0 0 1 0 1 1"),
    ("c-proc_ns", b"pid:[" + b"9" * 30 + b"]"),
])
def test_fuzz_crashes_found_stay_fixed(target: str, data: bytes) -> None:
    """Inputs the 100,000-case runs crashed on (ValueError past int()'s 4,300 digits from
    the bytes parsers and the C reader, a mountinfo escape that is not octal, C and Python
    disagreeing on stat fields and huge numbers)."""
    t = next(t for t in fz.TARGETS if t.name == target)
    if t.needs_c and not C_BUILT:
        pytest.skip("the C accelerator is not built")
    t.run(data)
