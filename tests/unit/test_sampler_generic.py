"""The sampler's reads of the generic controllers (governor/controllers, hugetlb here): each
sample's ``values``, tenants' too; a group without their files is not read again until the
slow tier; text not the kernel's costs the group's sample, counted as ``parse``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.reader import StatReader
from governor.controllers.base import Host
from governor.metering.sampler import Sampler
from tests.unit.cgroupfs_fake import READ_PATHS, create_child, enable

HOST = Host(hugepage_sizes=("2MB", "1GB"))
#: hugetlb's files in a group, as a 6.1 kernel shows them with 2 MB pages in use
HUGETLB = {
    "hugetlb.2MB.current": "4194304\n", "hugetlb.2MB.rsvd.current": "4194304\n",
    "hugetlb.2MB.events": "max 2\n", "hugetlb.2MB.max": "4194304\n",
    "hugetlb.1GB.current": "0\n", "hugetlb.1GB.rsvd.current": "0\n",
    "hugetlb.1GB.events": "max 0\n", "hugetlb.1GB.max": "max\n",
}
WEB_VALUES = {"hugetlb.2MB.current": 4194304, "hugetlb.2MB.rsvd_current": 4194304,
              "hugetlb.2MB.events_max": 2, "hugetlb.1GB.current": 0,
              "hugetlb.1GB.rsvd_current": 0, "hugetlb.1GB.events_max": 0}


@pytest.fixture
def samplers() -> Iterator[list[Sampler]]:
    made: list[Sampler] = []
    yield made
    for s in made:
        s.close()
        s.fs.close()


def tree(tmp_path: Path) -> Path:
    root = tmp_path / "cg"
    root.mkdir()
    sub = create_child(root, "governor.slice")
    t = create_child(sub, "acme")
    web = create_child(t, "web")
    create_child(t, "db")
    for d in (t, web):
        for name, text in HUGETLB.items():
            (d / name).write_text(text)
    enable(sub, t, controllers="hugetlb")
    return root


def sampler(root: Path, made: list[Sampler], accelerated: bool, **kw: Any) -> Sampler:
    s = Sampler(CgroupFS(root, verify=False), "governor.slice", "n", host=HOST,
                accelerated=accelerated, **kw)
    made.append(s)
    return s


@pytest.mark.parametrize("accelerated", READ_PATHS)
def test_values_of_groups_and_tenants(tmp_path: Path, samplers: list[Sampler],
                                      accelerated: bool) -> None:
    root = tree(tmp_path)
    s = sampler(root, samplers, accelerated, slow_every=1000)
    for _ in range(3):  # the slow pass, then the fast tier (the C loop when accelerated)
        got = {x.path: x.values for x in s.sample().samples}
        assert got == {"acme": WEB_VALUES, "acme/web": WEB_VALUES, "acme/db": None}
    (root / "governor.slice/acme/web/hugetlb.2MB.current").write_text("2097152\n")
    web = {x.path: x for x in s.sample().samples}["acme/web"]
    assert web.values is not None and web.values["hugetlb.2MB.current"] == 2097152


@pytest.mark.parametrize("accelerated", READ_PATHS)
def test_a_group_without_the_files_is_read_again_only_on_the_slow_tier(
        tmp_path: Path, samplers: list[Sampler], accelerated: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    root = tree(tmp_path)
    s = sampler(root, samplers, accelerated, slow_every=4)
    calls: list[str] = []
    real = StatReader.read_bytes

    def counted(self: StatReader, rel: str, name: str, *, recheck: bool = False) -> Any:
        calls.append(rel)
        return real(self, rel, name, recheck=recheck)

    monkeypatch.setattr(StatReader, "read_bytes", counted)
    assert s.sample().slow
    db = "governor.slice/acme/db"
    assert calls.count(db) == 2  # one .current per size: none there
    while not s.reads_slow_tier("acme/db"):
        s.sample()
    s.sample()   # db's own slow tier: still nothing there
    # hugetlb enabled in db since: not seen (nor read) on the other passes of the round
    for name, text in HUGETLB.items():
        (root / db / name).write_text(text)
    calls.clear()
    for _ in range(3):
        assert not s.reads_slow_tier("acme/db")
        p = s.sample()
        assert not p.slow and {x.path: x.values for x in p.samples}["acme/db"] is None
    assert db not in calls and calls  # the others are read on every pass
    # db's slow tier looks again (the reader's memory of the absent files too)
    assert s.reads_slow_tier("acme/db")
    p = s.sample()
    assert {x.path: x.values for x in p.samples}["acme/db"] == WEB_VALUES


@pytest.mark.parametrize("accelerated", READ_PATHS)
@pytest.mark.parametrize(("name", "text"), [
    ("hugetlb.2MB.current", "lots\n"), ("hugetlb.2MB.events", "max\n"),
    ("hugetlb.1GB.rsvd.current", "-1\n")])
def test_text_not_the_kernels_costs_the_groups_sample(
        tmp_path: Path, samplers: list[Sampler], accelerated: bool, name: str,
        text: str) -> None:
    root = tree(tmp_path)
    s = sampler(root, samplers, accelerated, slow_every=1000)
    s.sample()
    (root / "governor.slice/acme/web" / name).write_text(text)
    for n in (1, 2):
        p = s.sample()
        assert [x.path for x in p.samples] == ["acme", "acme/db"]
        assert len(p.errors) == 1 and f"acme/web/{name}" in p.errors[0]
        assert "(parse)" in p.errors[0]
        assert dict(+s.error_counts) == {"parse": n}
    (root / "governor.slice/acme/web" / name).write_text(HUGETLB[name])
    assert [x.path for x in s.sample().samples] == ["acme", "acme/db", "acme/web"]


def test_a_file_too_large_is_a_too_large_error(tmp_path: Path,
                                               samplers: list[Sampler]) -> None:
    root = tree(tmp_path)
    s = sampler(root, samplers, False, slow_every=1000)
    (root / "governor.slice/acme/web/hugetlb.2MB.events").write_text("max 1\n" * 200_000)
    p = s.sample()
    assert [x.path for x in p.samples] == ["acme", "acme/db"]
    assert dict(+s.error_counts) == {"too_large": 1}


def test_no_generic_values_when_the_host_has_no_huge_pages(
        tmp_path: Path, samplers: list[Sampler]) -> None:
    root = tree(tmp_path)
    s = Sampler(CgroupFS(root, verify=False), "governor.slice", "n", host=Host())
    samplers.append(s)
    assert all(x.values is None for x in s.sample().samples)


def test_read_bytes(tmp_path: Path) -> None:
    root = tree(tmp_path)
    with StatReader(CgroupFS(root, verify=False)) as r:
        web = "governor.slice/acme/web"
        assert r.read_bytes(web, "hugetlb.2MB.current") == b"4194304\n"
        before = r.open_fds
        (root / web / "hugetlb.2MB.current").write_text("0\n")
        assert r.read_bytes(web, "hugetlb.2MB.current") == b"0\n"  # pread on the open fd
        assert r.open_fds == before
        assert r.read_bytes(web, "hugetlb.16GB.current") is None
        (root / web / "hugetlb.16GB.current").write_text("0\n")
        assert r.read_bytes(web, "hugetlb.16GB.current") is None  # remembered absent
        assert r.read_bytes(web, "hugetlb.16GB.current", recheck=True) == b"0\n"


@pytest.mark.parametrize("accelerated", READ_PATHS)
def test_a_controller_its_parent_does_not_enable_costs_no_open(
        tmp_path: Path, samplers: list[Sampler], accelerated: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #16: a group's hugetlb files exist only where its parent enables hugetlb, so
    the sampler reads the parents' cgroup.subtree_control (once a pass each) and opens no
    file of a controller enabled nowhere; once enabled, each group's next slow tier reads
    them."""
    root = tree(tmp_path)
    sub, t = root / "governor.slice", root / "governor.slice/acme"
    enable(sub, t, controllers="cpu memory")   # hugetlb switched off for both levels
    s = sampler(root, samplers, accelerated, slow_every=2)
    calls: list[tuple[str, str]] = []
    real = StatReader.read_bytes

    def counted(self: StatReader, rel: str, name: str, *, recheck: bool = False) -> Any:
        calls.append((rel, name))
        return real(self, rel, name, recheck=recheck)

    monkeypatch.setattr(StatReader, "read_bytes", counted)
    for _ in range(4):   # slow and fast passes alike
        p = s.sample()
        assert {x.path: x.values for x in p.samples} == {
            "acme": None, "acme/web": None, "acme/db": None}
    assert calls == []
    # the files are there (left by the tree) but the kernel would not show them: once the
    # parents enable hugetlb they are read, from each group's next slow tier on
    enable(sub, t, controllers="cpu memory hugetlb")
    for _ in range(2):
        p = s.sample()
    got = {x.path: x.values for x in p.samples}
    assert got["acme/web"] == WEB_VALUES and got["acme"] == WEB_VALUES
    assert got["acme/db"] is None
    assert {rel for rel, _ in calls} == {"governor.slice/acme", "governor.slice/acme/web",
                                         "governor.slice/acme/db"}


@pytest.mark.parametrize("accelerated", READ_PATHS)
def test_an_unreadable_subtree_control_falls_back_to_the_files(
        tmp_path: Path, samplers: list[Sampler], accelerated: bool) -> None:
    """A parent whose cgroup.subtree_control cannot be read does not hide its groups'
    values: their files are tried, as they always were."""
    root = tree(tmp_path)
    (root / "governor.slice/acme/cgroup.subtree_control").unlink()
    s = sampler(root, samplers, accelerated)
    got = {x.path: x.values for x in s.sample().samples}
    assert got["acme/web"] == WEB_VALUES and got["acme"] == WEB_VALUES


@pytest.mark.parametrize("accelerated", READ_PATHS)
def test_subtree_control_read_once_per_parent_and_only_for_the_slow_tier(
        tmp_path: Path, samplers: list[Sampler], accelerated: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The parents' cgroup.subtree_control is read for the groups whose slow tier the pass
    reads only (the others read the files they had then), once per parent a pass for the
    generic values and the effective lists together."""
    root = tree(tmp_path)
    s = sampler(root, samplers, accelerated, slow_every=3)
    reads: list[str] = []
    real = CgroupFS.read

    def counted(self: CgroupFS, rel: str, file: str) -> str:
        if file == "cgroup.subtree_control":
            reads.append(rel)
        return real(self, rel, file)

    monkeypatch.setattr(CgroupFS, "read", counted)
    p = s.sample()
    assert p.slow and {x.path: x.values for x in p.samples}["acme/web"] == WEB_VALUES
    assert sorted(reads) == ["governor.slice", "governor.slice/acme"]
    parent = {"acme": "governor.slice", "acme/web": "governor.slice/acme",
              "acme/db": "governor.slice/acme"}
    for _ in range(2 * 3):
        reads.clear()
        due = [g for g in parent if s.reads_slow_tier(g)]
        assert len(due) == 1   # 3 groups, slow_every 3: one a pass
        p = s.sample()
        assert not p.slow and {x.path: x.values for x in p.samples}["acme/web"] == WEB_VALUES
        assert reads == [parent[due[0]]]
