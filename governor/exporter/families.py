"""One family of per-group series as text: the C accelerator or its Python twin.

A group family is ``prefix + label + value`` for every row ``(label, stats)`` whose value is
known, joined by newlines.  The value comes from the row's stats as the ``KIND_*`` says
(an attribute, a key of a dict attribute, a PSI line's total, or the row's own dict) and is
written as an exact decimal integer, or for microsecond counters as ``repr(value / 1e6)``
(seconds).  :func:`family` is ``governor.exporter._fastrender.family`` when it is built
(governor/exporter/_fastrender.c; a scrape at 1,000 groups renders about 45,000 such
lines, two thirds of its CPU in Python), else :func:`family_py`, which writes the same text
(tests/unit/test_fastrender.py renders the same rows both ways).  ``GOVERNOR_PURE_PYTHON=1``
selects the Python twin, as for the sampler's accelerator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from governor.accel import load

KIND_ATTR: Final = 0        #: ``getattr(stats, attr)``; None: no line
KIND_DICT: Final = 1        #: ``getattr(stats, attr)[key]``; dict None or key absent: none
KIND_DICT_USEC: Final = 2   #: as KIND_DICT, in seconds
KIND_ITEM: Final = 3        #: the row's second element is the dict: ``[key]``
KIND_PSI_SOME: Final = 4    #: ``getattr(stats, attr).get(key).some.total``, in seconds
KIND_PSI_FULL: Final = 5    #: ``... .full.total`` in seconds; full None: no line

Rows = list[tuple[str, Any]]


def escape_label(v: str) -> str:
    """A label value escaped for the text format: backslash, double quote, newline."""
    if "\\" in v or '"' in v or "\n" in v:
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return v


def escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def family_py(prefix: str, rows: Rows, kind: int, attr: str, key: str | None, /) -> str:
    """The Python twin of the C ``family``: same arguments, same text."""
    if kind == KIND_ATTR:
        vals = [(lbl, getattr(st, attr)) for lbl, st in rows]
        return "\n".join([f"{prefix}{lbl}{v}" for lbl, v in vals if v is not None])
    if kind == KIND_ITEM:
        return "\n".join([f"{prefix}{lbl}{c[key]}" for lbl, c in rows if key in c])
    if kind in (KIND_DICT, KIND_DICT_USEC):
        ds = [(lbl, d) for lbl, st in rows if (d := getattr(st, attr)) is not None]
        if kind == KIND_DICT:
            return "\n".join([f"{prefix}{lbl}{d[key]}" for lbl, d in ds if key in d])
        return "\n".join([f"{prefix}{lbl}{d[key] / 1e6!r}" for lbl, d in ds if key in d])
    if kind in (KIND_PSI_SOME, KIND_PSI_FULL):
        ps = [(lbl, p) for lbl, st in rows
              if (d := getattr(st, attr)) is not None and (p := d.get(key)) is not None]
        if kind == KIND_PSI_SOME:
            return "\n".join([f"{prefix}{lbl}{p.some.total / 1e6!r}" for lbl, p in ps])
        return "\n".join([f"{prefix}{lbl}{p.full.total / 1e6!r}" for lbl, p in ps
                          if p.full is not None])
    raise ValueError(f"unknown kind {kind}")


def _accelerated() -> Callable[[str, Rows, int, str, str | None], str] | None:
    fast = load("governor.exporter._fastrender")
    return None if fast is None else fast.family


#: the C accelerator's ``family`` when built (and not turned off), else None
ACCELERATED: Final = _accelerated()
family: Final[Callable[[str, Rows, int, str, str | None], str]] = ACCELERATED or family_py
