# Types of the optional C accelerator governor/cgroupfs/_keepwarm.c: keep_warm's writer
# thread (keepwarm.MigrationWarmer's background mode; its twin is MigrationWarmer.touch).

def warm_start(fd: int, interval_ns: int, /) -> int:
    """Start the writer thread once (fd dup'ed, replacing the one it had; OSError when it
    cannot be dup'ed or the thread made); the thread's tid."""
def warm_until(deadline_ns: int, /) -> None:
    """A move just happened: write every interval until CLOCK_MONOTONIC ``deadline_ns``.
    Never waits for a write under way."""
def warm_stats() -> tuple[int, int, int, int]:
    """(writes, refused writes, errno of the last refusal (0: none since warm_start), tid
    of the thread (0: not running))."""
def warm_stop() -> None:
    """Stop and join the thread (after a write under way) and close its fd."""
