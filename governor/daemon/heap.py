"""The daemon's own memory (issue #16: resident memory, and the GIL the placement listener
waits for): at most two malloc arenas (:func:`limit_arenas`, before any thread starts), the
start-up heap frozen out of the collector's way (:func:`settle_heap`, once running) and
the C heap's free pages given back (:func:`trim_heap`, every :data:`TRIM_PASSES` passes).
"""

from __future__ import annotations

import functools
import gc
import os
from collections.abc import Callable

#: the collector's first threshold once running (see :func:`settle_heap`)
GC_YOUNG = 10_000
#: the C heap's free pages are given back every this many passes (see :func:`trim_heap`)
TRIM_PASSES = 30

#: glibc's mallopt(3) parameter M_ARENA_MAX, and the daemon's value (see limit_arenas)
M_ARENA_MAX = -8
MALLOC_ARENAS = 2


def limit_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """At most ``arenas`` glibc malloc arenas (issue #16, resident memory): by default each
    thread that allocates gets its own (up to 8 per CPU), and memory freed in one stays
    resident there; the daemon's dozen threads (scheduler workers, placement, OOM watch,
    exporter) each kept some.  Called before any thread starts.  False where the C library
    is not glibc (nothing changed) or refuses; ``MALLOC_ARENA_MAX`` in the environment wins."""
    import ctypes

    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))


def settle_heap() -> int:
    """Collect, then move every object alive now to the collector's permanent generation
    (``gc.freeze``): what start-up made (modules, SQLAlchemy's metadata, the policy) lives
    as long as the daemon, and no longer has to be traversed by each full collection.
    Those held the GIL for up to 60 ms per collection at 1,000 groups (bench/gil_wait.py),
    which the placement listener waited out.  Returns the number of objects frozen."""
    gc.collect()
    gc.freeze()
    # the young generation is collected after GC_YOUNG net new container objects, not
    # 700: a pass's objects (samples, rows) die by reference count between collections,
    # so collections almost stop (issue #16: at 1,000 groups 13.8 a pass and 7% of its
    # CPU with CPython's 700; `bench/daemon_pass.py --gc-young 700` against the default
    # shows both); cyclic garbage is still collected once that many objects accumulate
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
    trim_heap()
    return gc.get_freeze_count()


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        import ctypes  # (imported already: the openat2 choke point, cgroupfs/files.py)

        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):   # not glibc: musl has no malloc_trim
        return None
    return trim


def trim_heap() -> bool:
    """Give the free pages of the C heap back to the kernel (glibc's ``malloc_trim``:
    the top of the heap and whole free pages inside it).  Start-up (the policy applied to
    every group, the first pass's catch-up) leaves several MiB free but resident; at
    1,000 groups this was 6 MiB of the daemon's RSS (issue #16: at most 80 MiB).  About
    0.1 ms on the host.  False where there is no malloc_trim."""
    trim = _malloc_trim()
    return trim is not None and bool(trim(0))
