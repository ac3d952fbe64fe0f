"""The C accelerator (governor.cgroupfs._fastread) against the pure-Python path.

Both read the same fake tree (real kernel output, then odd and broken text) and map the
same raw values onto samples; every value, None and error must be the same.  Skipped,
saying so, when the extension is not built.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.parse import Psi, PsiLine
from governor.cgroupfs.reader import ACCELERATED, FAST_FILES, GroupStats, StatReader
from tests.unit.cgroupfs_fake import LEAF_FILES, create_child

pytestmark = pytest.mark.skipif(
    not ACCELERATED, reason="governor.cgroupfs._fastread not in use (not built: pip install -e .; "
        "or GOVERNOR_PURE_PYTHON=1)")

PSI = LEAF_FILES["cpu.pressure"]
SOME = "some avg10=0.00 avg60=0.00 avg300=0.00 total=1523\n"

#: (file, text): real layouts first, then odd ones (parsed by the Python parsers from the
#: C path too, so they must agree) and broken ones (the same error from both)
CASES = [
    ("cpu.stat", LEAF_FILES["cpu.stat"]),
    ("cpu.stat", "usage_usec 18446744073709551615\nuser_usec 99999999999999999999\n"),
    ("cpu.stat", "usage_usec 7\n" * 3),                       # duplicate key: last wins
    ("cpu.stat", "usage_usec 007\nsystem_usec 0\n"),
    ("cpu.stat", ""),                                          # empty: {}
    ("cpu.stat", "usage_usec 5"),                              # truncated: no newline
    ("cpu.stat", "usage_usec  5\n\n"),                         # odd spacing, blank line
    ("cpu.stat", "usage_usec 5\r\nuser_usec 6\n"),
    ("cpu.stat", "usage_usec -5\n"),
    ("cpu.stat", "usage_usec 5 6\n"),                          # broken
    ("cpu.stat", "usage_usec x\n"),                            # broken
    ("cpu.stat", "usagé_usec 5\n"),                            # non-ASCII key
    ("memory.current", "270336\n"),
    ("memory.current", "0\n"),
    ("memory.current", "123456789012345678901234567890\n"),
    ("memory.current", "270336"),                              # no newline
    ("memory.current", " 270336 \n"),
    ("memory.current", "1_000\n"),
    ("memory.current", "+5\n"),
    ("memory.current", "max\n"),                               # broken for a counter
    ("memory.current", ""),                                    # broken
    ("memory.peak", "4096\n\n"),
    ("memory.events", LEAF_FILES["memory.events"]),
    ("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"),  # older kernel
    ("io.stat", LEAF_FILES["io.stat"]),
    ("io.stat", ""),
    ("io.stat", LEAF_FILES["io.stat"] + "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=5 dios=6\n"),
    ("io.stat", "254:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=5 dios=6 cost.vrate=100.00\n"),
    ("io.stat", "254:0 rbytes=1 wbytes=2 rios=3 wios=4\n"),    # older kernel: no discards
    ("io.stat", "254:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=5 dios=6"),  # truncated
    ("io.stat", "254:0 rbytes=max\n"),                         # broken
    ("io.stat", "254:0 rbytes\n"),                             # broken
    ("pids.current", "1\n"),
    ("cpu.pressure", PSI),
    ("cpu.pressure", SOME),                                    # no full line (before 5.13)
    ("cpu.pressure", SOME.replace("0.00", "12.34", 1).replace("1523", "99999999999999999999")),
    ("cpu.pressure", PSI.replace("avg10=0.00", "avg10=1e3")),
    ("cpu.pressure", PSI + "\n"),
    ("cpu.pressure", "full avg10=0.00 avg60=0.00 avg300=0.00 total=1\n" + SOME),
    ("cpu.pressure", SOME[:-1]),                               # truncated
    ("cpu.pressure", "full avg10=0.00 avg60=0.00 avg300=0.00 total=1\n"),  # broken: no some
    ("cpu.pressure", "some avg10=0.00 total=5\n"),             # broken
    ("io.pressure", PSI.replace("total=1320", "total=x")),     # broken
]


def outcome(fn: Callable[[], Any]) -> Any:
    try:
        return ("ok", fn())
    except Exception as e:  # the same type and message from both paths
        return ("error", type(e), str(e))


def read_both(fs: CgroupFS, rel: str, *, slow: bool = False) -> tuple[Any, Any]:
    """The first and second (fast path) reads by each path, as outcomes."""
    out = []
    for accelerated in (False, True):
        with StatReader(fs, accelerated=accelerated) as r:
            out.append((outcome(lambda r=r: r.read(rel, slow=slow)),
                        outcome(lambda r=r: r.read(rel, slow=slow))))
    return out[0], out[1]


@pytest.fixture
def fs(tmp_path: Path) -> CgroupFS:
    return CgroupFS(tmp_path, verify=False)


def test_real_kernel_output_reads_the_same(fs: CgroupFS, tmp_path: Path) -> None:
    create_child(tmp_path, "g")
    py, c = read_both(fs, "g", slow=True)
    assert py == c
    assert py[1][0] == "ok" and py[1][1].cpu["usage_usec"] == 52083


@pytest.mark.parametrize(("name", "text"), CASES)
def test_odd_and_broken_text_reads_the_same(fs: CgroupFS, tmp_path: Path, name: str,
                                            text: str) -> None:
    g = create_child(tmp_path, "g")
    (g / name).write_text(text)
    py, c = read_both(fs, "g")
    assert py == c


@pytest.mark.parametrize("missing", FAST_FILES)
def test_missing_files_are_none_on_both(fs: CgroupFS, tmp_path: Path, missing: str) -> None:
    g = create_child(tmp_path, "g")
    (g / missing).unlink()
    py, c = read_both(fs, "g")
    assert py == c
    st = c[1][1]
    assert isinstance(st, GroupStats)
    assert st.psi.get(missing.removesuffix(".pressure")) is None if "pressure" in missing \
        else None in (st.cpu, st.memory_current, st.memory_peak, st.swap_current,
                      st.memory_events, st.io, st.pids_current)


def test_changing_pressure_and_counters_are_reparsed(fs: CgroupFS, tmp_path: Path) -> None:
    g = create_child(tmp_path, "g")
    with StatReader(fs, accelerated=False) as py, StatReader(fs, accelerated=True) as c:
        for total in (1523, 1777, 1777, 2000):
            (g / "cpu.pressure").write_text(PSI.replace("total=1523", f"total={total}"))
            (g / "cpu.stat").write_text(LEAF_FILES["cpu.stat"].replace("52083", str(total)))
            a, b = py.read("g"), c.read("g")
            assert a == b and b.psi["cpu"].some.total == total == b.cpu["usage_usec"]
            assert isinstance(b.psi["cpu"].some, PsiLine) and isinstance(b.psi["cpu"], Psi)


def test_results_are_fresh_objects(fs: CgroupFS, tmp_path: Path) -> None:
    create_child(tmp_path, "g")
    with StatReader(fs, accelerated=True) as r:
        a, b = r.read("g"), r.read("g")
        assert a == b and a.cpu is not b.cpu and a.io is not b.io
        assert a.io is not None and b.io is not None
        assert a.io["254:0"] is not b.io["254:0"]


def test_subdirs_lists_what_scandir_lists(tmp_path: Path) -> None:

    from governor.cgroupfs import _fastread
    from governor.cgroupfs.files import scandir_subdirs

    d = tmp_path / "g"
    d.mkdir()
    for name in ("b", "a", "c.d", "z" * 200):
        (d / name).mkdir()
    for name, text in LEAF_FILES.items():
        (d / name).write_text(text)
    (d / "link").symlink_to(d / "a")                  # a symlink to a dir is not listed
    os.mkdir(os.fsencode(d) + b"/caf\xe9")             # not UTF-8: surrogateescape, as scandir
    for i in range(300):                              # more than one getdents64 buffer
        (d / f"n{i:03d}").mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (d, empty):
        fds = [os.open(path, os.O_RDONLY | os.O_DIRECTORY) for _ in range(2)]
        try:
            assert _fastread.subdirs(fds[0]) == scandir_subdirs(fds[1])
        finally:
            for fd in fds:
                os.close(fd)
    fd = os.open(d / "a", os.O_PATH)
    try:
        with pytest.raises(OSError):                  # as scandir: an error, not a list
            _fastread.subdirs(fd)
        with pytest.raises(OSError):
            scandir_subdirs(fd)
    finally:
        os.close(fd)


#: io.stat of 2,000 devices: 130 KiB, twice the first pread's buffer (reader._BUF)
_BIG_IO = "".join(f"{8 + d // 256}:{d % 256} rbytes={d} wbytes=2 rios=3 wios=4 dbytes=5 dios=6\n"
                  for d in range(2000))


@pytest.mark.parametrize(("name", "text"), [
    ("io.stat", _BIG_IO),
    ("io.stat", _BIG_IO.replace(" dios=6\n", "\n", 1)),  # not the exact layout: Python parses
    ("cpu.stat", "".join(f"key_{i} {i}\n" for i in range(8000))),  # 100 KiB, 8,000 keys
    ("io.stat", _BIG_IO * 9),  # past reader.MAX_FILE (1 MiB): too large, on both
])
def test_files_larger_than_the_read_buffer_read_the_same(
        fs: CgroupFS, tmp_path: Path, name: str, text: str) -> None:
    """No fixed-size buffer truncates: a file that fills the first pread (64 KiB; the
    issue's "8 KiB buffer") is read again whole into a bigger one, in C as in Python, and
    one past MAX_FILE is an error (StatFileError too_large) on both, never a truncated
    value."""
    from governor.cgroupfs.reader import _BUF, MAX_FILE

    assert len(text) > _BUF
    create_child(tmp_path, "g")
    (tmp_path / "g" / name).write_text(text)
    py, c = read_both(fs, "g")
    assert py == c
    if len(text) >= MAX_FILE:
        assert c[1][0] == "error" and "too_large" in c[1][2]
    else:
        assert c[1][0] == "ok"
        st = c[1][1]
        assert (len(st.io) == 2000 if name == "io.stat" else len(st.cpu) == 8000)
        with StatReader(fs, accelerated=True) as r:  # the C read itself, no fallback
            r.read("g")
            e = r.entries["g"]
            assert r.fast_read is not None and e.fast is not None
            assert r.fast_read(e.fast, e.cache, e.ino) == st


EVENTS_TEXT = "low 0\nhigh {high}\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n"


def _events(g: Path, high: int) -> None:
    (g / "memory.events").write_text(EVENTS_TEXT.format(high=high))


def test_watched_memory_events_are_handed_out_unread_until_an_event(
        fs: CgroupFS, tmp_path: Path) -> None:
    """While the OOM watch says nothing changed a group's memory.events, the C path hands
    out the value it read last (no read: a change nobody told of is not seen); an event
    has it read again; the slow tier reads it again regardless; unwatched, every read
    reads it."""
    g = create_child(tmp_path, "g")
    _events(g, 1)
    with StatReader(fs, accelerated=True) as r:
        r.events_watched("g")                    # before the reader has the group
        assert r.read("g").memory_events["high"] == 1   # opened: the Python path
        _events(g, 2)
        assert r.read("g").memory_events["high"] == 2   # marked: read, and trusted
        _events(g, 3)                                   # a change no event told of
        assert r.read("g").memory_events["high"] == 2   # handed out unread
        assert r.read("g").memory_events is not r.read("g").memory_events  # fresh dicts
        r.events_changed("g")                           # the watch saw it
        assert r.read("g").memory_events["high"] == 3
        _events(g, 4)
        assert r.read("g").memory_events["high"] == 3
        assert r.read("g", slow=True).memory_events["high"] == 4   # the slow tier reads
        _events(g, 5)
        assert r.read("g").memory_events["high"] == 4   # and trusts that read again
        r.events_changed("other")                       # another group's: nothing here
        assert r.read("g").memory_events["high"] == 4
        r.events_unwatched("g")
        assert r.read("g").memory_events["high"] == 5
        _events(g, 6)
        r.events_changed("g")                           # not watched now: no mark
        assert r.read("g").memory_events["high"] == 6
        _events(g, 7)
        assert r.read("g").memory_events["high"] == 7   # every read reads
        # watched again, then all unwatched at once (the watcher closing)
        r.events_watched("g")
        assert r.read("g").memory_events["high"] == 7
        _events(g, 8)
        r.events_unwatched(None)
        assert r.read("g").memory_events["high"] == 8


def test_an_event_during_the_read_keeps_its_mark(
        fs: CgroupFS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An event that comes while the C path reads a marked file (its Python parser ran,
    and let the watcher's thread in) is not lost: what was read is not trusted, the next
    read reads again."""
    from governor.cgroupfs import reader as reader_mod
    from governor.cgroupfs.parse import FlatKeyedBytes

    g = create_child(tmp_path, "g")
    odd = "low  0\nhigh {high}\n"    # not the kernel's exact layout: the Python parser
    (g / "memory.events").write_text(odd.format(high=1))
    with StatReader(fs, accelerated=True) as r:
        r.events_watched("g")
        r.read("g")
        parse = FlatKeyedBytes.__call__
        events: list[int] = []

        def parse_during_an_event(self: FlatKeyedBytes, data: bytes) -> Any:
            if self.fmt == "memory.events" and not events:
                events.append(1)
                r.events_changed("g")    # the watcher's thread, meanwhile
            return parse(self, data)

        monkeypatch.setattr(FlatKeyedBytes, "__call__", parse_during_an_event)
        assert r.read("g").memory_events["high"] == 1 and events == [1]
        monkeypatch.setattr(FlatKeyedBytes, "__call__", parse)
        (g / "memory.events").write_text(odd.format(high=2))
        assert r.read("g").memory_events["high"] == 2   # read again, not trusted
        entry = r.entries["g"].cache[reader_mod.EVENTS]
        assert entry is not None and len(entry) == 3    # that read is trusted
        (g / "memory.events").write_text(odd.format(high=3))
        assert r.read("g").memory_events["high"] == 2


def test_the_python_path_reads_memory_events_every_time(fs: CgroupFS, tmp_path: Path) -> None:
    g = create_child(tmp_path, "g")
    _events(g, 1)
    with StatReader(fs, accelerated=False) as r:
        r.events_watched("g")
        for high in (1, 2, 3):
            _events(g, high)
            assert r.read("g").memory_events["high"] == high
