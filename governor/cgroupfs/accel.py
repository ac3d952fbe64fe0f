"""The reader's C accelerator (``governor/cgroupfs/_fastread.c``), through :mod:`governor.accel`.

None when it is not built (no compiler at install time) or when ``GOVERNOR_PURE_PYTHON=1``
is set: every caller then takes its pure-Python path, which gives the same results
(tests/unit/test_fastread.py)."""

from __future__ import annotations

import types

from governor.accel import load


def fastread() -> types.ModuleType | None:
    """``governor.cgroupfs._fastread``, or None (not built, or pure Python asked for)."""
    return load("governor.cgroupfs._fastread")
