"""Issue #16: the daemon's own cost, the parts a unit test can show (the figures are
``bench/run daemon_cost``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from governor.daemon import limit_arenas


def test_malloc_arenas_limited_unless_the_environment_says() -> None:
    # in a child: mallopt changes the process for good
    code = ("from governor.daemon import limit_arenas; import ctypes, sys; "
            "sys.exit(0 if limit_arenas() else 3)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_malloc_arena_max_from_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_arenas() is False
