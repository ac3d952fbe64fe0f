"""The optional C accelerators, loaded in one place.

governor/cgroupfs/_fastread.c (the sampler's reads), governor/metering/_fastmeter.c (the
meter step), governor/exporter/_fastrender.c (the exporter's per-group families) and
governor/store/_fastrows.c (the rows of a pass's raw samples) are
built by setup.py when a compiler is there.  :func:`load` returns one, or None when it is
not built or ``GOVERNOR_PURE_PYTHON=1`` is set: every caller then takes its pure-Python
twin, which gives the same results (each has a parity test).
"""

from __future__ import annotations

import importlib
import os
import types


def load(module: str) -> types.ModuleType | None:
    """The accelerator ``module`` (e.g. ``governor.metering._fastmeter``), or None."""
    if os.environ.get("GOVERNOR_PURE_PYTHON") == "1":
        return None
    try:
        return importlib.import_module(module)
    except ImportError:
        return None
