"""The sampler's read-back of the generic controllers' effective values (cpuset's
``cpuset.cpus.effective``/``cpuset.mems.effective``) on each group's slow tier (every group
on the first pass, then each on its slot's passes), on a fake tree."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from governor.cgroupfs.files import CgroupFS
from governor.metering import sampler as sampler_mod
from governor.metering.controller_files import EFFECTIVE_MAX
from governor.metering.sampler import Sampler
from tests.unit.cgroupfs_fake import create_child, enable


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "cg"
    root.mkdir()
    sub = create_child(root, "governor.slice")
    t = create_child(sub, "acme")
    (t / "cpuset.cpus.effective").write_text("0-1\n")
    (t / "cpuset.mems.effective").write_text("0\n")
    web = create_child(t, "web")
    (web / "cpuset.cpus.effective").write_text("1\n")
    (web / "cpuset.mems.effective").write_text("0\n")
    create_child(t, "db")   # its effective files taken away: a read finds none
    enable(sub, t, controllers="cpuset")
    return root


@pytest.fixture
def sampler(root: Path) -> Iterator[Sampler]:
    fs = CgroupFS(root, verify=False)
    s = Sampler(fs, "governor.slice", "n", slow_every=2)
    yield s
    s.close()
    fs.close()


def test_effective_read_on_each_groups_slow_tier(root: Path, sampler: Sampler) -> None:
    p = sampler.sample()
    assert p.slow
    assert sampler.effective == {"acme": {"cpus": "0-1", "mems": "0"},
                                 "acme/web": {"cpus": "1", "mems": "0"}}
    assert p.errors == []
    (root / "governor.slice/acme/web/cpuset.cpus.effective").write_text("0\n")
    # the passes that are not web's keep what its last read found; its own reads again
    seen = []
    for _ in range(sampler.slow_every):
        due = sampler.reads_slow_tier("acme/web")
        assert not sampler.sample().slow
        seen.append((due, sampler.effective["acme/web"]["cpus"]))
    assert seen in ([(False, "1"), (True, "0")], [(True, "0"), (False, "0")]), seen


def test_gone_group_is_forgotten(root: Path, sampler: Sampler) -> None:
    sampler.sample()
    shutil.rmtree(root / "governor.slice/acme/web")
    sampler.sample()
    assert "acme/web" not in sampler.effective
    sampler.sample()
    assert set(sampler.effective) == {"acme"}


def test_file_removed_drops_the_value(root: Path, sampler: Sampler) -> None:
    sampler.sample()
    (root / "governor.slice/acme/web/cpuset.mems.effective").unlink()
    sampler.sample()
    sampler.sample()
    assert sampler.effective["acme/web"] == {"cpus": "1"}


@pytest.mark.parametrize(("content", "reason"), [
    (b"0," * EFFECTIVE_MAX, "too_large"),
])
def test_hostile_file_is_a_sample_error(root: Path, sampler: Sampler, content: bytes,
                                        reason: str) -> None:
    (root / "governor.slice/acme/web/cpuset.cpus.effective").write_bytes(content)
    p = sampler.sample()
    assert sampler.error_counts[reason] == 1
    assert any("cpuset.cpus.effective" in e for e in p.errors)
    # the group keeps its sample; only its effective values are dropped
    assert "acme/web" in {s.path for s in p.samples}
    assert "acme/web" not in sampler.effective
    assert sampler.effective["acme"]["cpus"] == "0-1"


def test_undecodable_bytes_never_raise(root: Path, sampler: Sampler) -> None:
    (root / "governor.slice/acme/web/cpuset.cpus.effective").write_bytes(b"\xff\x001\n")
    p = sampler.sample()
    assert p.errors == []
    assert sampler.effective["acme/web"]["cpus"].endswith("1")


def test_unreadable_file_counts_as_read_error(root: Path, sampler: Sampler,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import governor.metering.sampler as sm

    def boom(fs: CgroupFS, rel: str, file: str) -> bytes | None:
        raise fs._error("read", rel, file, OSError(5, "Input/output error"))

    sampler.sample()
    monkeypatch.setattr(sm, "_read_capped", boom)
    errors = [e for _ in range(sampler.slow_every) for e in sampler.sample().errors]
    assert sampler.error_counts["read"] == 3   # acme, acme/db, acme/web: once a round
    assert sampler.effective == {}
    assert len(errors) == 3


def test_a_controller_refusing_the_text(root: Path, sampler: Sampler,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from governor.controllers.base import ValueReadError
    from governor.controllers.cpuset import Cpuset

    def refuse(self: Cpuset, read: object) -> dict[str, str]:
        raise ValueReadError("cpuset.cpus.effective", "not a list", b"zz")

    monkeypatch.setattr(Cpuset, "read_effective", refuse)
    p = sampler.sample()
    assert sampler.error_counts["parse"] == 3
    assert sampler.effective == {}
    assert any("not a list" in e for e in p.errors)


def test_no_effective_read_where_the_parent_does_not_enable_cpuset(
        root: Path, sampler: Sampler, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #16: cpuset's effective files are opened only in groups whose parent enables
    cpuset (cgroup.subtree_control, read once a pass per parent of the groups whose slow
    tier the pass reads), never per group for a controller enabled nowhere."""
    enable(root / "governor.slice/acme", controllers="cpu memory")
    opened: list[str] = []
    real = sampler_mod._read_capped

    def counted(fs: CgroupFS, rel: str, file: str) -> bytes | None:
        opened.append(rel)
        return real(fs, rel, file)

    monkeypatch.setattr(sampler_mod, "_read_capped", counted)
    assert sampler.sample().slow
    # acme's parent (the subtree) still enables cpuset; web's and db's does not
    assert set(opened) == {"governor.slice/acme"}
    assert sampler.effective == {"acme": {"cpus": "0-1", "mems": "0"}}
    enable(root / "governor.slice/acme", controllers="cpuset")
    for _ in range(sampler.slow_every):   # web's slow tier comes round in a round
        sampler.sample()
    assert sampler.effective["acme/web"] == {"cpus": "1", "mems": "0"}
