"""The optional C accelerator (``governor/cgroupfs/_fastread.c``), loaded in one place.

None when it is not built (no compiler at install time) or when ``GOVERNOR_PURE_PYTHON=1``
is set: every caller then takes its pure-Python path, which gives the same results
(tests/unit/test_fastread.py)."""

from __future__ import annotations

import os
import types


def fastread() -> types.ModuleType | None:
    """``governor.cgroupfs._fastread``, or None (not built, or pure Python asked for)."""
    if os.environ.get("GOVERNOR_PURE_PYTHON") == "1":
        return None
    try:
        from governor.cgroupfs import _fastread
    except ImportError:
        return None
    return _fastread
