"""governor status/top: snapshots read from the fake cgroupfs, rows from pairs of them, the
table, and the top loop driven by a pipe for keys.  Whether the figures match a real kernel
is tests/kernel/test_status_demo_kernel.py's job."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from governor.cgroupfs.files import CgroupFS
from governor.cli import main
from governor.status.cli import Keys, run_top
from governor.status.render import human_bytes, table
from governor.status.snapshot import Source
from governor.status.view import JSON_FIELDS, Row, Snapshot, rows, sort_rows
from tests.unit.cgroupfs_fake import LEAF_FILES, create_child

MiB = 1 << 20


def cpu_stat(usage: int) -> str:
    return LEAF_FILES["cpu.stat"].replace("usage_usec 52083", f"usage_usec {usage}")


def io_stat(*lines: tuple[str, int, int]) -> str:
    return "".join(f"{dev} rbytes={r} wbytes={w} rios=1 wios=1 dbytes=0 dios=0\n"
                   for dev, r, w in lines)


def tree(tmp_path: Path) -> Path:
    """governor.slice/{acme/{web,batch},globex/api} with the example policy's limits."""
    root = tmp_path / "cg"
    root.mkdir()
    sub = create_child(root, "governor.slice")
    acme = create_child(sub, "acme", {**LEAF_FILES, "memory.max": "536870912\n"})
    create_child(acme, "web", {**LEAF_FILES, "memory.max": "268435456\n",
                               "memory.high": "234881024\n", "memory.swap.max": "0\n",
                               "pids.max": "256\n", "cpu.max": "150000 100000\n"})
    create_child(acme, "batch", {**LEAF_FILES, "cpu.max": "50000 100000\n"})
    glob = create_child(sub, "globex")
    api = create_child(glob, "api")
    (api / "io.stat").unlink()  # io controller not enabled there: missing, not zero
    return root


def timed(s: Snapshot, t: float) -> Snapshot:
    """The snapshot as if every group had been read at monotonic time ``t``."""
    return Snapshot({p: dataclasses.replace(g, at=t) for p, g in s.groups.items()})


def by_path(rs: list[Row]) -> dict[str, Row]:
    return {r.path: r for r in rs}


@pytest.fixture
def src(tmp_path: Path) -> Source:
    return Source(CgroupFS(tree(tmp_path), verify=False), "governor.slice")


def test_snapshot_reads_every_group_and_the_kernel_limit_files(src: Source) -> None:
    s = src.take()
    assert sorted(s.groups) == ["acme", "acme/batch", "acme/web", "globex", "globex/api"]
    web = s.groups["acme/web"]
    assert web.limits.memory_max == 268435456 and web.limits.memory_high == 234881024
    assert web.limits.swap_max == 0 and web.limits.pids_max == 256
    assert web.limits.cpu_max is not None and web.limits.cpu_max.quota == 150000
    assert s.groups["acme/batch"].limits.memory_max == "max"
    assert web.stats.cpu is not None and web.stats.cpu["usage_usec"] == 52083
    assert s.groups["globex/api"].stats.io is None


def test_rates_come_from_the_difference_of_two_reads(src: Source, tmp_path: Path) -> None:
    g = tmp_path / "cg/governor.slice/acme/web"
    (g / "io.stat").write_text(io_stat(("254:0", 1 * MiB, 64 * MiB)))
    a = timed(src.take(), 100.0)
    (g / "cpu.stat").write_text(cpu_stat(52083 + 3_000_000))       # 3 s of CPU in 2 s
    (g / "io.stat").write_text(io_stat(("254:0", 3 * MiB, 68 * MiB),  # +2 MiB read, +4 write
                                       ("8:0", 2 * MiB, 0)))         # a device seen now
    (g / "memory.events").write_text("low 0\nhigh 4\nmax 9\noom 2\noom_kill 2\n"
                                      "oom_group_kill 0\n")
    (g / "memory.current").write_text("201326592\n")
    b = timed(src.take(), 102.0)
    r = by_path(rows(a, b))["acme/web"]
    assert r.state == "live" and r.interval_s == 2.0
    assert r.cpu_percent == 150.0 and r.cpu_usage_usec == 3_052_083 and r.cpu_max_cores == 1.5
    assert r.io_read_bytes_per_s == 2 * MiB and r.io_write_bytes_per_s == 2 * MiB
    assert r.oom_kills == 2 and r.oom_kills_interval == 2
    assert r.memory_current_bytes == 201326592 and r.memory_max_bytes == 268435456
    assert r.pids_current == 1 and r.pids_max == 256 and r.swap_max_bytes == 0
    # an idle group: exactly zero, and the missing io controller gives no IO figures
    api = by_path(rows(a, b))["globex/api"]
    assert api.cpu_percent == 0.0 and api.io_read_bytes_per_s is None
    assert api.cpu_max_cores == "max" and api.memory_high_bytes == "max"


def test_gone_new_and_reset_groups_have_no_rates(src: Source, tmp_path: Path) -> None:
    s = tmp_path / "cg/governor.slice"
    a = timed(src.take(), 10.0)
    shutil.rmtree(s / "acme/batch")
    create_child(s / "globex", "cache")
    (s / "acme/web/cpu.stat").write_text(cpu_stat(1000))  # went backwards
    b = timed(src.take(), 11.0)
    rs = by_path(rows(a, b))
    gone = rs["acme/batch"]
    assert gone.state == "gone"
    assert all(getattr(gone, f) is None for f in JSON_FIELDS
               if f not in ("path", "tenant", "group", "state"))
    new = rs["globex/cache"]
    assert new.state == "new" and new.cpu_percent is None and new.io_read_bytes_per_s is None
    assert new.memory_current_bytes == 270336 and new.cpu_usage_usec == 52083
    assert rs["acme/web"].state == "live" and rs["acme/web"].cpu_percent is None
    # re-created under the same name between the reads: another cgroup id, a new group
    api = b.groups["globex/api"]
    other = dataclasses.replace(api, stats=dataclasses.replace(api.stats, cgroup_id=1))
    c = Snapshot({**b.groups, "globex/api": dataclasses.replace(other, at=12.0)})
    assert by_path(rows(b, c))["globex/api"].state == "new"


@pytest.mark.parametrize(("sort", "order"), [
    ("cpu", ["acme", "acme/web", "acme/batch", "globex", "globex/api"]),
    ("memory", ["globex", "globex/api", "acme", "acme/batch", "acme/web"]),
    ("io", ["globex", "globex/api", "acme", "acme/batch", "acme/web"]),
    ("pids", ["globex", "globex/api", "acme", "acme/batch", "acme/web"]),
    ("name", ["acme", "acme/batch", "acme/web", "globex", "globex/api"]),
])
def test_sort_keeps_groups_under_their_tenant(src: Source, tmp_path: Path, sort: str,
                                              order: list[str]) -> None:
    s = tmp_path / "cg/governor.slice"
    a = timed(src.take(), 0.0)
    (s / "acme/cpu.stat").write_text(cpu_stat(52083 + 900_000))
    (s / "acme/web/cpu.stat").write_text(cpu_stat(52083 + 800_000))
    (s / "acme/batch/cpu.stat").write_text(cpu_stat(52083 + 100_000))
    (s / "globex/memory.current").write_text(str(300 * MiB))
    (s / "globex/api/memory.current").write_text(str(200 * MiB))
    (s / "globex/pids.current").write_text("40\n")
    (s / "globex/api/pids.current").write_text("39\n")
    (s / "globex/io.stat").write_text(io_stat(("254:0", 9 * MiB, 70 * MiB)))
    b = timed(src.take(), 1.0)
    rs = rows(a, b, sort=sort)  # type: ignore[arg-type]
    # globex/api has no io.stat: it sorts after groups with figures; acme has none beyond
    # the baseline so its groups tie at 0 and fall back to names
    assert [r.path for r in rs] == order
    assert [r.path for r in sort_rows(rs, "name")] == sorted(r.path for r in rs)


def test_table_shows_limits_infinity_gone_and_missing(src: Source, tmp_path: Path) -> None:
    s = tmp_path / "cg/governor.slice"
    a = timed(src.take(), 0.0)
    (s / "acme/batch/cpu.stat").write_text(cpu_stat(52083 + 500_000))
    shutil.rmtree(s / "globex/api")
    b = timed(src.take(), 1.0)
    console = Console(record=True, width=200, color_system=None)
    console.print(table(rows(a, b, sort="memory"), sort="memory"))
    text = console.export_text()
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert "MEMORY ▼" in text
    assert lines["web"].split()[1:6] == ["0.0", "/150", "264.0KiB", "256.0MiB", "224.0MiB"]
    assert lines["batch"].split()[1:5] == ["50.0", "/50", "264.0KiB", "∞"]
    assert "0B /0B" in lines["web"] and "1/256" in lines["web"]
    assert lines["api"].split()[1:] == ["gone"]
    assert lines["acme"].split()[3] == "512.0MiB"


@pytest.mark.parametrize(("n", "text"), [(0, "0B"), (1023, "1023B"), (1536, "1.5KiB"),
                                         (3 * MiB, "3.0MiB"), (5 << 40, "5.0TiB"),
                                         (None, "-")])
def test_human_bytes(n: int | None, text: str) -> None:
    assert human_bytes(n) == text


def _top(src: Source, keys: bytes, iterations: int | None) -> tuple[int, str]:
    r, w = os.pipe()
    os.write(w, keys)
    console = Console(record=True, width=200, color_system=None, force_terminal=True)
    try:
        n = run_top(src.take, console=console, keys=Keys(r), interval=0.05, sort="cpu",
                    iterations=iterations, heading=lambda by: f"heading sorted by {by}")
    finally:
        os.close(r)
        os.close(w)
    return n, console.export_text()


def test_top_key_changes_the_sort_and_q_quits(src: Source) -> None:
    frames, text = _top(src, b"m", iterations=2)
    assert frames == 2
    assert "heading sorted by memory" in text and "MEMORY ▼" in text and "CPU% ▼" not in text
    frames, text = _top(src, b"q", iterations=None)
    assert frames == 0 and "measuring over 0.05s" in text


def test_top_without_keyboard_runs_its_iterations(src: Source) -> None:
    console = Console(record=True, width=200, color_system=None)
    n = run_top(src.take, console=console, keys=Keys(None), interval=0.01, sort="name",
                iterations=3, heading=lambda by: by)
    assert n == 3 and "TENANT/GROUP ▼" in console.export_text()


def test_status_refuses_a_root_that_is_not_cgroup2(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["status", "--cgroup-root", str(tmp_path), "--format", "json"])
    assert rc == 2
    assert "is not on a cgroup2 filesystem" in capsys.readouterr().err


def test_storage_of_containers_from_images_is_shown_and_missing_is_a_dash(
        tmp_path: Path) -> None:
    """Issue #19: the writable layers' bytes, from the measurer the snapshot is given, at
    the second read: a column of the table (``-`` when none is measured, never 0B unless
    measured so), a JSON field (null), nothing for a gone group."""
    measured = {"acme/web": 5 << 30, "acme/batch": 0}
    asked: list[str] = []

    def storage(path: str) -> int | None:
        asked.append(path)
        return measured.get(path)

    src = Source(CgroupFS(tree(tmp_path), verify=False), "governor.slice", storage=storage)
    a = timed(src.take(), 0.0)
    assert sorted(asked) == ["acme", "acme/batch", "acme/web", "globex", "globex/api"]
    assert a.groups["acme/web"].storage_bytes == 5 << 30
    measured["acme/web"] = (5 << 30) + (512 << 20)   # grew between the reads
    shutil.rmtree(tmp_path / "cg/governor.slice/globex/api")
    b = timed(src.take(), 1.0)
    rs = by_path(rows(a, b))
    assert rs["acme/web"].storage_bytes == (5 << 30) + (512 << 20)
    assert rs["acme/batch"].storage_bytes == 0 and rs["acme"].storage_bytes is None
    assert rs["globex/api"].state == "gone" and rs["globex/api"].storage_bytes is None
    assert JSON_FIELDS[-1] == "storage_bytes"
    assert rs["acme/web"].as_dict()["storage_bytes"] == (5 << 30) + (512 << 20)
    assert rs["acme"].as_dict()["storage_bytes"] is None
    console = Console(record=True, width=220, color_system=None)
    console.print(table(rows(a, b, sort="name"), sort="name"))
    text = console.export_text()
    header = next(line for line in text.splitlines() if "TENANT/GROUP" in line)
    assert header.split()[6:8] == ["SWAP", "STORAGE"]
    end = header.index("STORAGE") + len("STORAGE")   # right-justified: the cell ends there

    def cell(name: str) -> str:
        line = next(ln for ln in text.splitlines() if ln.split()[:1] == [name])
        return line[:end].split()[-1]
    assert (cell("web"), cell("batch"), cell("acme"), cell("globex")) == (
        "5.5GiB", "0B", "-", "-")
    assert next(ln for ln in text.splitlines() if ln.split()[:1] == ["api"]).split() == [
        "api", "gone"]
    # without a measurer (the default): every group's storage is missing, not zero
    (tmp_path / "plain").mkdir()
    plain = Source(CgroupFS(tree(tmp_path / "plain"), verify=False), "governor.slice")
    assert all(g.storage_bytes is None for g in plain.take().groups.values())
