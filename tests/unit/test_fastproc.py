"""The C accelerator governor.placement._fastproc against procfs's pure-Python readers.

Both read the same fake procfs files (real kernel output, then odd, broken, very long and
unreadable ones) and must give the same value, ProcessGone or error (class, errno, file).
Skipped, saying so, when the extension is not built.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from governor.placement import procfs
from tests.unit.procfs_fake import REAL_KTHREAD_STAT, REAL_STAT, add_process, new_proc

pytestmark = pytest.mark.skipif(
    not procfs.ACCELERATED, reason="governor.placement._fastproc not in use (not built: "
    "pip install -e .; or GOVERNOR_PURE_PYTHON=1)")


# -- placement's procfs readers ------------------------------------------------------------
#: (file, content): real kernel output, then odd and broken text; both readers must give the
#: same value, ProcessGone or error class
PROC_CASES = [
    ("stat", REAL_STAT),
    ("stat", REAL_KTHREAD_STAT),
    ("stat", REAL_STAT.replace("(cat)", "(a) b (c))")),      # a comm with ") " inside
    ("stat", REAL_STAT.replace("(cat)", "()")),
    ("stat", REAL_STAT.replace("(cat)", "(caté\udcff)".encode("utf-8", "surrogateescape")
                               .decode("utf-8", "surrogateescape"))),
    ("stat", REAL_STAT.rstrip("\n")),                         # no newline
    ("stat", REAL_STAT.replace(" 10796 10796 ", " -1 10796 ", 1)),  # negative field
    ("stat", ""),                                             # a zombie being reaped: gone
    ("stat", "10801 (cat) R 10796\n"),                        # truncated: error
    ("stat", "10801 cat R 10796\n"),                          # no parentheses: error
    ("stat", REAL_STAT.replace(" 4194304 ", " 41x4304 ", 1)),  # not a number: error
    ("cgroup", "0::/gov/t/web\n"),
    ("cgroup", "0::/\n"),
    ("cgroup", "12:pids:/user.slice\n1:name=systemd:/user.slice\n0::/user.slice/x.scope\n"),
    ("cgroup", "12:pids:/user.slice\n1:name=systemd:/user.slice\n"),  # v1 only: no 0:: line
    ("cgroup", ""),
    ("cgroup", "0::/with space/and\u00e9\n"),
    ("cgroup", "0::/no-newline"),
    ("task/50/children", "51 52 "),
    ("task/50/children", ""),
    ("task/50/children", "51"),
    ("task/50/children", " ".join(str(p) for p in range(100000, 112000)) + " "),  # > 64 KiB
    ("task/50/children", "51 x "),                            # broken: error
]


def _proc_read(proc: Path, pid: int, name: str, use_c: bool,
               monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.setattr(procfs, "_c", procfs._c if use_c else None)
    p = procfs.Proc(str(proc), pid)
    try:
        if name == "stat":
            return tuple(p.stat())
        if name == "cgroup":
            return p.cgroup()
        if name == "children":
            return p.children()
        return p.pidns()
    except procfs.ProcessGone:
        return "gone"
    except ValueError:  # text not in the kernel's layout: ValueError from both
        return "error", True
    except OSError as e:  # errno and file name, from both
        return "oserror", e.errno, e.filename
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize(("name", "text"), PROC_CASES)
def test_proc_readers_agree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            name: str, text: str) -> None:
    proc = new_proc(tmp_path)
    add_process(proc, 50)
    (proc / "50" / name).write_bytes(text.encode("utf-8", "surrogateescape"))
    kind = "children" if name.endswith("children") else name
    c = _proc_read(proc, 50, kind, True, monkeypatch)
    py = _proc_read(proc, 50, kind, False, monkeypatch)
    assert c == py


def test_proc_readers_agree_on_links_missing_files_and_live_processes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = new_proc(tmp_path)
    add_process(proc, 60, ns=4026532500)
    for name in ("stat", "cgroup", "ns", "children"):
        assert _proc_read(proc, 60, name, True, monkeypatch) == \
            _proc_read(proc, 60, name, False, monkeypatch)
        gone = [] if name == "children" else "gone"  # a gone process has no children
        assert _proc_read(proc, 61, name, True, monkeypatch) == gone  # no such process
        assert _proc_read(proc, 61, name, False, monkeypatch) == gone
    assert _proc_read(proc, 60, "ns", True, monkeypatch) == 4026532500
    os.unlink(proc / "60" / "ns" / "pid")
    os.symlink("pid:4026532500", proc / "60" / "ns" / "pid")  # not the kernel's layout
    for use_c in (True, False):
        assert _proc_read(proc, 60, "ns", use_c, monkeypatch)[0] == "error"  # type: ignore[index]
    # this process, in the live /proc: every field the same
    for name in ("stat", "cgroup", "ns", "children"):
        assert _proc_read(Path("/proc"), os.getpid(), name, True, monkeypatch) == \
            _proc_read(Path("/proc"), os.getpid(), name, False, monkeypatch)


# --- issue #15 item 17: /proc/PID/cgroup of any length; errors raised, not cleared -------

_V1 = "".join(f"{i}:ctrl{i},other{i}:/{'d' * 180}/x{i}\n" for i in range(1, 60))
LONG_CGROUP = [  # (case, text, the 0:: path): all longer than the C reader's old 8 KiB
    ("v1 hierarchies then 0::", _V1 + "0::/gov/t/web\n", "/gov/t/web"),
    ("0:: first, then v1", "0::/first\n" + _V1, "/first"),
    ("a 20 KiB path", "0::/" + "/".join(["s" * 99] * 200) + "\n",
     "/" + "/".join(["s" * 99] * 200)),
    ("no 0:: line", _V1 * 2, None),
    ("0:: line across 8 KiB", "x" * 8185 + "\n0::/across\n", "/across"),
    ("no newline at the end", _V1 + "0::/end", "/end"),
]


@pytest.mark.parametrize(("text", "want"), [c[1:] for c in LONG_CGROUP],
                         ids=[c[0] for c in LONG_CGROUP])
def test_item17_proc_cgroup_of_any_length_reads_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, want: str | None) -> None:
    proc = new_proc(tmp_path)
    add_process(proc, 50)
    (proc / "50" / "cgroup").write_text(text)
    assert len(text) > 8192
    c = _proc_read(proc, 50, "cgroup", True, monkeypatch)
    assert c == _proc_read(proc, 50, "cgroup", False, monkeypatch)
    assert c == ("" if want is None else want)


@pytest.mark.parametrize("name", ["cgroup", "stat"])
def test_item17_proc_file_too_large_raises_efbig_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    PROC_FILE_MAX = procfs.PROC_FILE_MAX
    proc = new_proc(tmp_path)
    add_process(proc, 50)
    text = _V1 if name == "cgroup" else REAL_STAT
    (proc / "50" / name).write_text(text * (PROC_FILE_MAX // len(text) + 1))
    want = ("oserror", errno.EFBIG, f"{proc}/50/{name}")
    assert _proc_read(proc, 50, name, True, monkeypatch) == want
    assert _proc_read(proc, 50, name, False, monkeypatch) == want


def test_item17_proc_read_error_is_raised_naming_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = new_proc(tmp_path)
    add_process(proc, 50)
    (proc / "50" / "cgroup").unlink()
    (proc / "50" / "cgroup").mkdir()  # read(2): EISDIR
    want = ("oserror", errno.EISDIR, f"{proc}/50/cgroup")
    assert _proc_read(proc, 50, "cgroup", True, monkeypatch) == want
    assert _proc_read(proc, 50, "cgroup", False, monkeypatch) == want


# -- no fixed-size buffer: every file is read whole --------------------------------------
#: what the C reader used to read into a fixed buffer, now all past its size
_MANY_KIDS = " ".join(str(p) for p in range(100000, 115000)) + " "  # 105 KiB (old: 64 KiB)
_LONG_STAT = REAL_STAT.rstrip("\n") + " 0" * 6000 + "\n"          # 12 KiB (old stack: 4 KiB)


def test_children_longer_than_the_old_buffer_are_read_whole_in_c(tmp_path: Path) -> None:
    """The C reader once gave up (-1) past 64 KiB and left the file to Python: it now reads
    it whole itself, and both readers give every pid."""
    proc = new_proc(tmp_path)
    add_process(proc, 50)
    path = proc / "50" / "task" / "50" / "children"
    path.write_text(_MANY_KIDS)
    assert len(_MANY_KIDS) > 65536
    assert procfs._c is not None
    assert procfs._c.proc_children(str(path)) == list(range(100000, 115000))
    assert procfs.parse_children(path.read_bytes()) == list(range(100000, 115000))


def test_stat_longer_than_the_stack_buffer_reads_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = new_proc(tmp_path)
    add_process(proc, 50)
    (proc / "50" / "stat").write_text(_LONG_STAT)
    assert len(_LONG_STAT) > 8192
    c = _proc_read(proc, 50, "stat", True, monkeypatch)
    assert c == _proc_read(proc, 50, "stat", False, monkeypatch)
    assert c[0] == "cat"  # type: ignore[index]


@pytest.mark.parametrize("target", [
    "pid:[" + "1" * 80 + "]",        # longer than the first readlink buffer, too big a number
    "pid:[4026532500]" + "x" * 300,   # a valid link followed by junk, past 256 bytes
    "x" * 300 + "pid:[4026532500]",   # junk first: the number is still found
])
def test_ns_links_longer_than_the_old_buffer_read_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    """readlink(2) truncates silently: the C reader reads a link that fills its buffer
    again into a bigger one, so it sees what os.readlink sees."""
    proc = new_proc(tmp_path)
    add_process(proc, 60, ns=4026532500)
    os.unlink(proc / "60" / "ns" / "pid")
    os.symlink(target, proc / "60" / "ns" / "pid")
    c = _proc_read(proc, 60, "ns", True, monkeypatch)
    assert c == _proc_read(proc, 60, "ns", False, monkeypatch)


def test_children_read_error_is_raised_naming_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = new_proc(tmp_path)
    add_process(proc, 50)
    kids = proc / "50" / "task" / "50" / "children"
    kids.unlink()
    kids.mkdir()  # read(2): EISDIR
    assert procfs._c is not None
    with pytest.raises(IsADirectoryError) as e:
        procfs._c.proc_children(str(kids))
    assert e.value.errno == errno.EISDIR and e.value.filename == str(kids)
