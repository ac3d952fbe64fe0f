"""governor status: the registered controllers' columns (cpuset's CPUS and MEMS) in the
table and in --format json, read from a fake tree's effective files."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from rich.console import Console

from governor.cgroupfs.files import CgroupFS
from governor.status.render import table
from governor.status.snapshot import Source
from governor.status.view import JSON_FIELDS, Snapshot, rows
from tests.unit.cgroupfs_fake import create_child


def tree(tmp_path: Path) -> Path:
    root = tmp_path / "cg"
    root.mkdir()
    sub = create_child(root, "governor.slice")
    acme = create_child(sub, "acme")
    (acme / "cpuset.cpus.effective").write_text("0-1\n")
    (acme / "cpuset.mems.effective").write_text("0\n")
    web = create_child(acme, "web")
    (web / "cpuset.cpus.effective").write_text("1\n")
    (web / "cpuset.mems.effective").write_text("0\n")
    create_child(acme, "batch")   # cpuset not enabled: nothing known
    return root


def _pair(root: Path) -> tuple[Snapshot, Snapshot]:
    fs = CgroupFS(root, verify=False)
    src = Source(fs, "governor.slice")
    try:
        a = src.take()
        b = src.take()
    finally:
        src.close()
        fs.close()
    return a, b


def test_snapshot_reads_the_effective_lists(tmp_path: Path) -> None:
    a, _ = _pair(tree(tmp_path))
    assert a.groups["acme/web"].effective == {"cpus": "1", "mems": "0"}
    assert a.groups["acme"].effective == {"cpus": "0-1", "mems": "0"}
    assert a.groups["acme/batch"].effective == {}


def test_json_has_the_columns_after_the_stable_fields(tmp_path: Path) -> None:
    a, b = _pair(tree(tmp_path))
    by = {r.path: r.as_dict() for r in rows(a, b, sort="name")}
    assert list(by["acme/web"])[: len(JSON_FIELDS)] == list(JSON_FIELDS)
    # the registered controllers' columns, in registry order (hugetlb's after cpuset's)
    assert list(by["acme/web"])[len(JSON_FIELDS):] == ["cpus", "mems", "hugetlb_bytes"]
    assert by["acme/web"]["cpus"] == "1" and by["acme/web"]["mems"] == "0"
    assert by["acme"]["cpus"] == "0-1"
    # nothing known: null (missing is not zero)
    assert by["acme/batch"]["cpus"] is None and by["acme/batch"]["mems"] is None


def test_gone_group_has_the_columns_empty(tmp_path: Path) -> None:
    root = tree(tmp_path)
    fs = CgroupFS(root, verify=False)
    src = Source(fs, "governor.slice")
    try:
        a = src.take()
        shutil.rmtree(root / "governor.slice/acme/web")
        b = src.take()
    finally:
        src.close()
        fs.close()
    gone = {r.path: r for r in rows(a, b)}["acme/web"]
    assert gone.state == "gone"
    assert gone.as_dict()["cpus"] is None


def test_table_shows_cpus_and_mems(tmp_path: Path) -> None:
    a, b = _pair(tree(tmp_path))
    b = Snapshot({p: dataclasses.replace(g, at=g.at + 1) for p, g in b.groups.items()})
    console = Console(width=240, record=True, color_system=None)
    console.print(table(rows(a, b, sort="name"), sort="name"))
    text = console.export_text()
    header = next(line for line in text.splitlines() if "TENANT/GROUP" in line)
    assert header.split()[-3:] == ["CPUS", "MEMS", "HUGETLB"]
    lines = {line.split()[0]: line.split() for line in text.splitlines()
             if line.strip().startswith(("acme", "web", "batch"))}
    assert lines["web"][-3:] == ["1", "0", "-"]
    assert lines["acme"][-3:] == ["0-1", "0", "-"]
    assert lines["batch"][-3:] == ["-", "-", "-"]


def test_table_with_a_gone_group_and_with_none(tmp_path: Path) -> None:
    root = tree(tmp_path)
    fs = CgroupFS(root, verify=False)
    src = Source(fs, "governor.slice")
    try:
        a = src.take()
        shutil.rmtree(root / "governor.slice/acme/web")
        b = src.take()
    finally:
        src.close()
        fs.close()
    console = Console(width=240, record=True, color_system=None)
    console.print(table(rows(a, b), sort="cpu"))
    assert "gone" in console.export_text()
    console = Console(width=240, record=True, color_system=None)
    console.print(table([], sort="cpu"))
    assert "(no tenants below the subtree)" in console.export_text()


def test_a_json_row_reads_back_with_its_columns(tmp_path: Path) -> None:
    """``governor demo`` reads ``status --format json`` back into rows: the registered
    controllers' keys are columns again, not unknown fields (the demo failed on them)."""
    import json

    from governor.status.view import Row

    a, b = _pair(tree(tmp_path))
    got = rows(a, b, sort="name")
    assert got and all(r.columns for r in got)
    for r in got:
        back = Row.from_dict(json.loads(json.dumps(r.as_dict())))
        assert back.as_dict() == r.as_dict()
        assert back.columns == r.columns
