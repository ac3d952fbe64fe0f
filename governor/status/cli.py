"""``governor status`` (print once) and ``governor top`` (live view), registered by
:func:`register` from ``governor.cli``.

Both read the tree twice and show rates derived from the pair (``status``: two reads
``--interval`` apart, 1 s by default; ``top``: a new frame every ``--interval``, each from
the previous read and the new one).  ``top`` reads single keys from the terminal (cbreak
mode, restored on exit): ``c`` ``m`` ``i`` ``p`` ``n`` sort by CPU, memory, IO, pids or
name, ``q`` (or Ctrl-C) quits.  Without a terminal on stdin it still runs (``--sort``,
``--iterations``, Ctrl-C).
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import click
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from governor.config import Config, parse_duration
from governor.status.render import KEYS, table
from governor.status.view import SORT_KEYS, Row, Snapshot, SortKey, rows, sort_rows

SORT = click.option("--sort", type=click.Choice(SORT_KEYS), default="cpu", show_default=True,
                    help="order of tenants (and of the groups within each)")


class Keys:
    """Single key presses from ``fd`` (cbreak mode while a terminal); :meth:`wait` returns
    a key or None when ``timeout`` passes.  At end of input (stdin not a terminal, e.g.
    /dev/null) it just waits."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self.eof = fd is None

    def wait(self, timeout: float) -> str | None:
        timeout = max(timeout, 0.0)
        if self.eof or self.fd is None:
            time.sleep(timeout)
            return None
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return None
        data = os.read(self.fd, 1)
        if not data:
            self.eof = True
            return None
        return data.decode(errors="replace")


def _writable(c: Config) -> Callable[[str], int | None] | None:
    from governor.image.writable import Pool

    return Pool.from_config(c).measurer()


@contextlib.contextmanager
def keyboard(fd: int | None) -> Iterator[Keys]:
    """Cbreak mode on a terminal ``fd`` (keys without Enter, no echo; Ctrl-C still SIGINT),
    restored on exit whatever happens."""
    saved = None
    if fd is not None and os.isatty(fd):
        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
    try:
        yield Keys(fd)
    finally:
        if saved is not None and fd is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run_top(take: Callable[[], Snapshot], *, console: Console, keys: Keys, interval: float,
            sort: SortKey, iterations: int | None, heading: Callable[[SortKey], str]) -> int:
    """The ``top`` loop; returns the number of frames shown.  Pure of any cgroup I/O: the
    snapshots come from ``take`` (tests drive it with a fake tree and a pipe for keys)."""
    def frame(rs: list[Row] | None) -> Group:
        head = Text(heading(sort), style="bold")
        if rs is None:
            return Group(head, Text(f"measuring over {interval:g}s ...", style="dim"))
        return Group(head, table(rs, sort=sort))

    frames = 0
    last: list[Row] | None = None
    prev = take()
    deadline = time.monotonic() + interval
    with Live(frame(None), console=console, auto_refresh=False,
              vertical_overflow="visible") as live:
        while True:
            key = keys.wait(deadline - time.monotonic())
            if key is not None:
                if key.lower() == "q":
                    break
                if key.lower() in KEYS:
                    sort = KEYS[key.lower()]
                    if last is not None:
                        last = sort_rows(last, sort)
                    live.update(frame(last), refresh=True)
                continue
            if time.monotonic() < deadline:
                continue
            cur = take()
            last = rows(prev, cur, sort=sort)
            prev = cur
            frames += 1
            live.update(frame(last), refresh=True)
            if iterations is not None and frames >= iterations:
                break
            deadline = max(deadline + interval, time.monotonic())
    return frames


def register(main: click.Group) -> None:
    from governor.clikit import FORMAT, config_options, emit_json

    @main.command("status")
    @config_options
    @FORMAT
    @SORT
    @click.option("--interval", default="1s", show_default=True, metavar="DURATION",
                  help="time between the two reads the rates come from")
    def status_cmd(cfg: Callable[[], Config], fmt: str, sort: SortKey, interval: str) -> None:
        """Every tenant and group once: CPU %, memory vs limits, swap, IO rates, pids,
        OOM kills (rates from two reads --interval apart)."""
        from governor.driver import open_tree
        from governor.status.snapshot import Source

        c = cfg()
        secs = parse_duration(interval, key="--interval", file=None)
        with open_tree(c, writes=False) as t:
            src = Source(t.fs, t.layout, storage=_writable(c))
            try:
                a = src.take()
                time.sleep(secs)
                b = src.take()
            finally:
                src.close()
        rs = rows(a, b, sort=sort)
        if fmt == "json":
            emit_json({"node": c.node, "subtree": c.subtree, "sort": sort,
                       "taken_at": datetime.now(UTC).isoformat(timespec="seconds"),
                       "interval_s": secs, "groups": [r.as_dict() for r in rs]})
            return
        Console().print(table(rs, sort=sort, title=(
            f"node {c.node}, subtree {c.subtree}: rates over {secs:g}s, sorted by {sort}")))

    @main.command("top")
    @config_options
    @SORT
    @click.option("--interval", default="2s", show_default=True, metavar="DURATION",
                  help="time between frames (each frame's rates are over it)")
    @click.option("--iterations", "-n", type=click.IntRange(min=1), default=None,
                  help="stop after N frames (default: until q or Ctrl-C)")
    def top_cmd(cfg: Callable[[], Config], sort: SortKey, interval: str,
                iterations: int | None) -> None:
        """Live view of every tenant and group, like systemd-cgtop per tenant.

        Keys: c cpu, m memory, i io, p pids, n name (sort); q or Ctrl-C quits.
        """
        from governor.driver import open_tree
        from governor.status.snapshot import Source

        c = cfg()
        secs = parse_duration(interval, key="--interval", file=None)
        try:
            stdin: int | None = sys.stdin.fileno()
        except (AttributeError, ValueError, OSError):  # no stdin, or not a real file
            stdin = None

        def heading(by: SortKey) -> str:
            return (f"governor top: node {c.node}, subtree {c.subtree}, every {secs:g}s, "
                    f"{datetime.now(UTC):%H:%M:%S} UTC, sorted by {by}   "
                    "[c]pu [m]emory [i]o [p]ids [n]ame  [q]uit")

        with open_tree(c, writes=False) as t:
            src = Source(t.fs, t.layout, storage=_writable(c))
            try:
                with keyboard(stdin) as keys, contextlib.suppress(KeyboardInterrupt):
                    run_top(src.take, console=Console(), keys=keys, interval=secs,
                            sort=sort, iterations=iterations, heading=heading)
            finally:
                src.close()
