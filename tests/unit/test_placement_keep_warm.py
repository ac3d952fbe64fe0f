"""keep_warm made adaptive (issue #16, "the daemon's own cost"): its window of no-op
migrations opens only while at least ``[placement] keep_warm_min_rate`` moves were made
within the last second, and closes ``keep_warm`` after the last such move."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from governor.config import KEEP_WARM_MIN_RATE, Config, load_config
from governor.errors import ConfigError
from governor.placement import netlink
from governor.placement.placer import Placer
from governor.placement.warm import KeepWarmGate
from governor.policy.loader import parse_policy
from tests.unit.procfs_fake import add_process, new_proc
from tests.unit.test_placement import PLACER_POLICY, RecordingFS, _Conn, fake_placer

W = 1.0  # keep_warm (the window) in the gate's tables


@pytest.mark.parametrize(("min_rate", "moves", "want"), [
    # below the rate: 4 moves within a second do not open a window of min_rate 5
    (5, [0.0, 0.25, 0.5, 0.75], [0.0, 0.0, 0.0, 0.0]),
    # the 5th move within the second opens it, for the window after that move
    (5, [0.0, 0.2, 0.4, 0.6, 0.8], [0.0, 0.0, 0.0, 0.0, 0.8 + W]),
    # 5 moves spread over a whole second are 5 a second only in the limit: not within it
    (5, [0.0, 0.25, 0.5, 0.75, 1.0], [0.0] * 5),
    # a steady 10 a second keeps extending the window (min_rate 3)
    (3, [0.0, 0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.2 + W, 0.3 + W, 0.4 + W]),
    # the rate drops: the slow moves neither extend nor reopen it; it ends after the last
    # fast one
    (3, [0.0, 0.1, 0.2, 1.5, 2.9], [0.0, 0.0, 0.2 + W, 0.2 + W, 0.2 + W]),
    # ...and a burst later opens a new one
    (3, [0.0, 0.1, 0.2, 5.0, 5.1, 5.2], [0, 0, 0.2 + W, 0.2 + W, 0.2 + W, 5.2 + W]),
    # 0 and 1: a window after every move (keep_warm before issue #16)
    (0, [0.0, 3.0, 9.0], [W, 3.0 + W, 9.0 + W]),
    (1, [0.0, 3.0], [W, 3.0 + W]),
])
def test_keep_warm_gate_opens_only_at_min_rate(min_rate: int, moves: list[float],
                                               want: list[float]) -> None:
    gate = KeepWarmGate(min_rate)
    got = [gate.moved(t, W) for t in moves]
    assert got == pytest.approx(want)


@pytest.mark.parametrize(("min_rate", "moves", "opened"), [
    (3, [0.0, 0.1, 0.2, 0.3, 0.4], 1),                # one window, extended
    (3, [0.0, 0.1, 0.2, 5.0, 5.1, 5.2], 2),           # closed between the two bursts
    (3, [0.0, 0.6, 1.2, 1.8], 0),                     # never 3 within a second
    (0, [0.0, 0.5, 3.0], 2),                          # 0.5 falls in the first window
])
def test_keep_warm_gate_counts_windows_opened(min_rate: int, moves: list[float],
                                              opened: int) -> None:
    gate = KeepWarmGate(min_rate)
    for t in moves:
        gate.moved(t, W)
    assert gate.opened == opened


def test_keep_warm_window_closes() -> None:
    """The window ends keep_warm after the last move at the rate; is_open says so."""
    gate = KeepWarmGate(3)
    for t in (10.0, 10.1, 10.2):
        gate.moved(t, 0.5)
    assert gate.is_open(10.69) and not gate.is_open(10.7)
    assert gate.moved(11.5, 0.5) == pytest.approx(10.7)  # a lone move: stays closed
    assert not gate.is_open(11.5)


def test_keep_warm_gate_window_zero_never_opens() -> None:
    gate = KeepWarmGate(0)
    assert [gate.moved(t, 0.0) for t in (0.0, 0.1)] == [0.0, 0.0] and gate.opened == 0


def test_keep_warm_gate_refuses_a_negative_rate() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        KeepWarmGate(-1)


# -- the Placer: only moves at the rate tell the warmer ------------------------------------
@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Path, Placer, list[float]]]:
    proc = new_proc(tmp_path)
    cg = tmp_path / "cg"
    for g in ("web", "batch", "ctr", "svc"):
        (cg / "gov" / "t" / g).mkdir(parents=True)
        (cg / "gov" / "t" / g / "cgroup.procs").write_text("")
    pol = parse_policy([("p.toml", PLACER_POLICY)])
    told: list[float] = []
    with RecordingFS(cg, proc) as fs:
        placer = fake_placer(fs, pol, proc, 999_999)
        placer.keep_warm = 0.3
        real = placer.warmer.moved

        def moved(until: float) -> None:  # what the C thread (or the listener) is told
            told.append(until)
            real(until)

        placer.warmer.moved = moved  # type: ignore[method-assign]
        yield proc, placer, told


def test_placer_default_min_rate_is_the_configs() -> None:
    """The daemon builds its Placer with keep_warm and its interval: the rate rule it gets
    is the configuration's default."""
    assert Config().keep_warm_min_rate == KEEP_WARM_MIN_RATE == 20
    assert KeepWarmGate(KEEP_WARM_MIN_RATE).min_rate == 20
    import inspect

    sig = inspect.signature(Placer.__init__)
    assert sig.parameters["keep_warm_min_rate"].default == KEEP_WARM_MIN_RATE


@pytest.mark.parametrize(("min_rate", "moves", "told", "windows"), [
    (3, 2, 0, 0),   # below the rate: no window, nothing written
    (3, 3, 1, 1),   # the third move within the second opens it
    (3, 5, 3, 1),   # later moves extend the same window
    (0, 2, 2, 1),   # always: every move tells the warmer
])
def test_placer_keep_warm_opens_only_at_min_rate(world: tuple[Path, Placer, list[float]],
                                                 min_rate: int, moves: int, told: int,
                                                 windows: int) -> None:
    proc, placer, got = world
    placer.warm_gate = KeepWarmGate(min_rate)
    t0 = time.monotonic()
    for pid in range(10, 10 + moves):
        add_process(proc, pid, comm="nginx", cgroup="/")
        placer.handle(netlink.ProcEvent(netlink.PROC_EVENT_EXEC, pid, pid))
    assert placer.counters.placements["moved"] == moves
    assert len(got) == told and placer.counters.keep_warm_windows == windows
    assert all(t0 + 0.3 <= u <= time.monotonic() + 0.3 for u in got)
    # the pure-Python writer (the listener) keeps warm exactly when the window is open
    conn = _Conn()
    assert placer._keep_warm(conn, False) is (told > 0)
    assert conn.timeouts == ([placer.keep_warm_interval] if told else [])


def test_placer_keep_warm_off_tells_nothing(world: tuple[Path, Placer, list[float]]) -> None:
    proc, placer, got = world
    placer.keep_warm = 0.0
    placer.warm_gate = KeepWarmGate(0)
    for pid in (10, 11):
        add_process(proc, pid, comm="nginx", cgroup="/")
        placer.handle(netlink.ProcEvent(netlink.PROC_EVENT_EXEC, pid, pid))
    assert placer.counters.placements["moved"] == 2
    assert got == [] and placer.counters.keep_warm_windows == 0


# -- [placement] keep_warm_min_rate --------------------------------------------------------
@pytest.mark.parametrize(("text", "want"), [
    (None, 20), ("0", 0), ("1", 1), ("50", 50), ("100000", 100_000)])
def test_keep_warm_min_rate_config(tmp_path: Path, text: str | None, want: int) -> None:
    f = tmp_path / "c.toml"
    f.write_text("" if text is None else f"[placement]\nkeep_warm_min_rate = {text}\n")
    assert load_config(f, environ={}).keep_warm_min_rate == want


@pytest.mark.parametrize("text", ["-1", "2.5", "true", '"20"', "100001", '"fast"'])
def test_keep_warm_min_rate_config_refuses(tmp_path: Path, text: str) -> None:
    """The error names the file, the key and the value, and what to write instead."""
    f = tmp_path / "c.toml"
    f.write_text(f"[placement]\nkeep_warm_min_rate = {text}\n")
    with pytest.raises(ConfigError) as e:
        load_config(f, environ={})
    msg = str(e.value)
    assert str(f) in msg and "placement.keep_warm_min_rate" in msg, msg
    value = repr(load_toml_value(text))
    assert value in msg and "moves a second from 0 to 100000" in msg, msg


def load_toml_value(text: str) -> object:
    import tomllib

    return tomllib.loads(f"v = {text}")["v"]
