"""``governor doctor``: which cgroup driver and why, the systemd bus, a bad database URL
(never echoing its password)."""

from __future__ import annotations

import os
from pathlib import Path

from governor.config import Config
from governor.doctor import _database_check, run_checks


def _by_name(checks: list, name: str) -> list:  # type: ignore[type-arg]
    return [c for c in checks if c.name == name]


def test_doctor_names_the_driver_and_why(tmp_path: Path) -> None:
    booted = tmp_path / "systemd"
    booted.mkdir()
    cfg = Config(cgroup_root=str(tmp_path), database_url=f"sqlite:///{tmp_path}/g.db",
                 policy=str(tmp_path / "none"))
    checks = run_checks(cfg, run_dir=str(booted))
    drv = _by_name(checks, "cgroup driver")[0]
    assert drv.info and drv.detail.startswith("systemd: PID 1 is systemd")
    # no system bus on this host: the systemd check fails with the socket and the fix
    bus = _by_name(checks, "systemd")[0]
    assert not bus.ok and "/run/dbus/system_bus_socket" in bus.detail
    assert "dbus" in bus.fix
    checks = run_checks(cfg, run_dir=str(tmp_path / "absent"))
    assert _by_name(checks, "cgroup driver")[0].detail.startswith(
        "cgroupfs: PID 1 is not systemd")
    assert not _by_name(checks, "systemd")


def test_doctor_refuses_a_subtree_systemd_cannot_name(tmp_path: Path) -> None:
    booted = tmp_path / "systemd"
    booted.mkdir()
    cfg = Config(cgroup_root=str(tmp_path), subtree="tenants", source="/etc/g.toml")
    bad = [c for c in run_checks(cfg, run_dir=str(booted))
           if c.name == "cgroup driver" and not c.ok]
    assert bad and "governor.subtree" in bad[0].detail and "slice" in bad[0].detail


def test_bad_database_url_never_shows_the_password() -> None:
    for url in ("postgresql+psycopg://gov:s3cret@db:notaport/x",
                "postgresql+psycopg://gov:s3cret@db/x?port=%%"):
        c = _database_check(Config(database_url=url))
        assert "s3cret" not in c.detail + c.fix
    c = _database_check(Config(database_url="postgresql+psycopg://gov:s3cret@db:notaport/x"))
    assert not c.ok and "***" in c.detail and "postgresql+psycopg://" in c.fix


def test_doctor_says_which_c_accelerators_run() -> None:
    """All three when built; with GOVERNOR_PURE_PYTHON=1 the twins, and why."""
    import subprocess
    import sys

    from governor.cgroupfs import reader

    code = ("from governor.doctor import _accelerator_check as c; x = c(); "
            "print(x.ok, x.detail)")
    env = {k: v for k, v in os.environ.items() if k != "GOVERNOR_PURE_PYTHON"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout
    if reader._fastread is not None:
        assert out.startswith("True in use: governor.cgroupfs._fastread, "
                              "governor.metering._fastsample, "
                              "governor.metering._fastmeter, governor.exporter._fastrender, "
                              "governor.store._fastrows")
        assert out.strip().endswith(", governor.placement._fastnetlink, "
                                    "governor.placement._fastproc, governor.cgroupfs._keepwarm")
    pure = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**env, "GOVERNOR_PURE_PYTHON": "1"}, check=True).stdout
    assert pure.startswith("False GOVERNOR_PURE_PYTHON=1 is set: their pure-Python twins")


def test_doctor_writable_layers_states(tmp_path: Path) -> None:
    from governor.config import Config
    from governor.doctor import _writable_check

    cfg = Config(state_dir=str(tmp_path))
    c = _writable_check(cfg)
    assert (c.ok, c.required) == (False, False)
    assert "pool_size" in c.detail and "prjquota" in c.fix
    cfg.image_pool_size = 1 << 30
    c = _writable_check(cfg)
    assert c.ok and "is made by the first launch" in c.detail
    (tmp_path / "containers.ext4").write_bytes(b"")
    c = _writable_check(cfg)
    assert c.ok and "mounted by the next launch" in c.detail
