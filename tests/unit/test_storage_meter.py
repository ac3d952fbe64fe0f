"""The writable-layer side of a pass (governor.metering.storage) against a pool whose
quota calls are recorded, and the pool's checks that need no kernel
(governor.image.writable).  The quotas themselves are tested on the kernel:
tests/kernel/test_storage_kernel.py."""

from __future__ import annotations

import errno
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from governor.image import quota
from governor.image.writable import Pool, WritableError
from governor.metering.sample import GroupSample
from governor.metering.storage import StorageMeter

MIB = 1 << 20


def sample(path: str) -> GroupSample:
    tenant, _, group = path.partition("/")
    return GroupSample(node="n", tenant=tenant, group=group or None, cgroup_id=1,
                       wall=datetime(2026, 1, 1, tzinfo=UTC), monotonic=1.0)


class FakePool(Pool):
    """A pool whose quota is a dict: project -> [bytes, limit]."""

    def __init__(self, tmp: Path, projects: dict[str, int], *, ready: bool = True) -> None:
        super().__init__(str(tmp))
        self.quota: dict[int, list[int | None]] = {p: [0, None] for p in projects.values()}
        self.fail: set[int] = set()
        self.is_ready = ready
        self.set_calls: list[tuple[int, int | None]] = []
        Path(self.containers).mkdir(parents=True, exist_ok=True)
        Path(self.projects_file).write_text(json.dumps(projects))

    def ready(self) -> bool:
        return self.is_ready

    def usage(self, groups: dict[str, int]) -> dict[str, quota.ProjectUsage]:  # type: ignore[override]
        return {g: quota.ProjectUsage(p, int(self.quota[p][0] or 0), 1, self.quota[p][1])
                for g, p in groups.items() if p not in self.fail}

    def set_limit(self, project: int, limit: int | None) -> None:
        self.set_calls.append((project, limit))
        self.quota[project][1] = None if limit is None else -(-limit // 1024) * 1024


def test_fill_sets_bytes_zero_and_none(tmp_path: Path) -> None:
    pool = FakePool(tmp_path, {"t/box": 7, "t/bad": 8})
    pool.quota[7][0] = 3 * MIB
    pool.fail.add(8)
    meter = StorageMeter(pool, dict)
    samples = [sample("t"), sample("t/box"), sample("t/none"), sample("t/bad")]
    meter.fill(samples)
    got = {s.path: s.storage_bytes for s in samples}
    # the tenant's own sample carries none (its groups do); a group without a project has
    # nothing, known; a project that cannot be read is unknown
    assert got == {"t": None, "t/box": 3 * MIB, "t/none": 0, "t/bad": None}


def test_not_ready_leaves_every_sample_unmeasured(tmp_path: Path) -> None:
    pool = FakePool(tmp_path, {"t/box": 7}, ready=False)
    samples = [sample("t/box"), sample("t/other")]
    StorageMeter(pool, dict).fill(samples)
    assert [s.storage_bytes for s in samples] == [None, None]


def test_limits_follow_the_policy_and_full_is_logged_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pool = FakePool(tmp_path, {"t/box": 7})
    limits: dict[str, int | None] = {"t/box": 4 * MIB}
    meter = StorageMeter(pool, lambda: limits)
    caplog.set_level(logging.INFO, logger="governor.storage")
    meter.fill([sample("t/box")])
    assert pool.set_calls == [(7, 4 * MIB)]
    meter.fill([sample("t/box")])
    assert pool.set_calls == [(7, 4 * MIB)]          # in force: not set again
    pool.quota[7][0] = 4 * MIB - 4096                # a write failed at the limit
    meter.fill([sample("t/box")])
    meter.fill([sample("t/box")])
    assert meter.full_counts["t/box"] == 1
    assert caplog.text.count("storage.max reached") == 1
    limits["t/box"] = 16 * MIB                       # raised: set, and no longer full
    meter.fill([sample("t/box")])
    assert pool.set_calls[-1] == (7, 16 * MIB)
    assert "storage.max no longer reached" in caplog.text
    limits.pop("t/box")                              # removed from the policy: no limit
    meter.fill([sample("t/box")])
    assert pool.set_calls[-1] == (7, None)
    # an odd limit is compared in the quota's 1 KiB unit, so it is not set every pass
    limits["t/box"] = 5 * MIB + 1
    meter.fill([sample("t/box")])
    meter.fill([sample("t/box")])
    assert pool.set_calls[-2:] == [(7, None), (7, 5 * MIB + 1)]


def test_projects_file_read_again_only_when_it_changes(tmp_path: Path) -> None:
    pool = FakePool(tmp_path, {"t/a": 7})
    meter = StorageMeter(pool, dict)
    s = [sample("t/a"), sample("t/b")]
    meter.fill(s)
    pool.quota[9] = [MIB, None]
    Path(pool.projects_file).write_text(json.dumps({"t/a": 7, "t/b": 9, "pad": 1}))
    s = [sample("t/a"), sample("t/b")]
    meter.fill(s)
    assert [x.storage_bytes for x in s] == [0, MIB]


def test_pool_without_project_quotas_and_no_pool_size_refuses(tmp_path: Path) -> None:
    pool = Pool(str(tmp_path / "state"))
    if pool.ready():  # pragma: no cover - a host whose /tmp has project quotas on
        pytest.skip("this filesystem has project quotas on")
    with pytest.raises(WritableError) as info:
        pool.ensure()
    msg = str(info.value)
    assert info.value.errno == errno.ENOTSUP
    assert str(tmp_path / "state" / "containers") in msg
    assert "without project quotas" in msg and "pool_size" in msg and "prjquota" in msg
    assert not (tmp_path / "state" / "containers.ext4").exists()


def test_pool_never_mounts_over_a_non_empty_directory(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pool = Pool(str(tmp_path / "state"), 64 * MIB)
    (tmp_path / "state" / "containers").mkdir(parents=True)
    (tmp_path / "state" / "containers" / "keep-me").write_text("x")
    Path(pool.image_file).write_bytes(b"")  # an existing pool file: mounted, not made
    ran: list[list[str]] = []
    monkeypatch.setattr("governor.image.writable._run", lambda argv, what: ran.append(argv))
    with pytest.raises(WritableError) as info:
        pool.ensure()
    assert "keep-me" in str(info.value) and "hide" in str(info.value)
    assert ran == []


def test_pool_too_small_and_missing_tools(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(WritableError, match="too small"):
        Pool(str(tmp_path / "a"), 4096).ensure()
    assert not list((tmp_path / "a").glob("containers.ext4*"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(WritableError, match=r"mkfs\.ext4 is not on PATH"):
        Pool(str(tmp_path / "b"), 64 * MIB).ensure()
    assert not list((tmp_path / "b").glob("containers.ext4*"))  # the sparse file removed


@pytest.mark.parametrize("body", ['{"t/a": "7"}', "[1]", "{", '{"t/a": true}'])
def test_projects_file_damaged_is_an_error_naming_it(tmp_path: Path, body: str) -> None:
    pool = Pool(str(tmp_path))
    Path(pool.containers).mkdir()
    Path(pool.projects_file).write_text(body)
    with pytest.raises(WritableError) as info:
        pool.projects()
    assert pool.projects_file in str(info.value)


def test_quota_calls_on_a_filesystem_without_them_say_what_to_change(tmp_path: Path) -> None:
    assert not quota.supported(str(tmp_path / "missing"))
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        if quota.supported(str(tmp_path)):  # pragma: no cover
            pytest.skip("this filesystem has project quotas on")
        with pytest.raises(quota.QuotaError) as info:
            quota.usage(fd, 123, str(tmp_path))
    finally:
        os.close(fd)
    assert str(tmp_path) in str(info.value)
    assert "Q_GETQUOTA" in str(info.value)
    assert info.value.errno != 0


def test_measurer_for_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = FakePool(tmp_path, {"t/box": 7})
    pool.quota[7][0] = 5 * MIB
    measure = pool.measurer()
    assert measure is not None
    assert (measure("t/box"), measure("t/none"), measure("t")) == (5 * MIB, 0, None)
    pool.fail.add(7)
    assert measure("t/box") is None  # unreadable: not measured, never 0
    assert FakePool(tmp_path / "b", {}, ready=False).measurer() is None
