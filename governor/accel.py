"""The optional C accelerators, loaded in one place.

governor/cgroupfs/_fastread.c (the sampler's reads), governor/metering/_fastsample.c (the
samples), governor/metering/_fastmeter.c (the meter step), governor/exporter/_fastrender.c
(the exporter's per-group families), governor/store/_fastrows.c (the rows of a pass's raw
samples), governor/placement/_fastproc.c and _fastnetlink.c (procfs reads, connector
datagrams) and governor/cgroupfs/_keepwarm.c (keep_warm's writer) are built by setup.py
when a compiler is there.  :func:`load` returns one, or None when it is
not built or ``GOVERNOR_PURE_PYTHON=1`` is set: every caller then takes its pure-Python
twin, which gives the same results (each has a parity test).  :func:`loaded` names the
ones in use (``governor_build_info{accelerators}``).
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
        mod = importlib.import_module(module)
    except ImportError:
        return None
    _loaded.add(module.rpartition(".")[2].lstrip("_"))
    return mod


#: short names ("fastread") of the accelerators :func:`load` has returned in this process
_loaded: set[str] = set()


def loaded() -> tuple[str, ...]:
    """The accelerators in use so far, sorted (``governor_build_info{accelerators}``)."""
    return tuple(sorted(_loaded))
