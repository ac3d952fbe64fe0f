from __future__ import annotations

from pathlib import Path

import pytest

from governor.cli import main
from governor.config import load_config
from governor.doctor import run_checks
from governor.errors import ConfigError
from tests.unit.test_parse import HYBRID_MOUNTINFO


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def test_defaults_when_default_path_missing(tmp_path: Path) -> None:
    cfg = load_config(None, environ={}, missing_ok=True)
    assert cfg.subtree == "governor.slice" and cfg.sample_interval == 10.0
    assert cfg.listen.startswith("127.0.0.1:")  # loopback by default


def test_example_config_is_valid_and_matches_defaults() -> None:
    example = Path(__file__).resolve().parents[2] / "config.example.toml"
    cfg = load_config(example, environ={})
    defaults = load_config(None, environ={}, missing_ok=True)
    for attr in ("subtree", "sample_interval", "reconcile_interval", "listen", "slow_every",
                 "spool_max_samples", "retention_raw", "log_format", "image_max_layer_size",
                 "image_max_layer_entries", "image_min_free_space"):
        assert getattr(cfg, attr) == getattr(defaults, attr), attr


def test_image_limits_default_to_the_stores_defaults(tmp_path: Path) -> None:
    from governor.image.limits import ImportLimits

    cfg = load_config(None, environ={}, missing_ok=True)
    assert ImportLimits() == ImportLimits(cfg.image_max_layer_size,
                                          cfg.image_max_layer_entries,
                                          cfg.image_min_free_space)
    p = write(tmp_path, '[images]\nmax_layer_size = "1M"\nmax_layer_entries = 10\n'
                        "min_free_space = 0\n")
    cfg = load_config(p, environ={})
    assert (cfg.image_max_layer_size, cfg.image_max_layer_entries,
            cfg.image_min_free_space) == (1 << 20, 10, 0)


def test_precedence_file_env_override(tmp_path: Path) -> None:
    p = write(tmp_path, '[governor]\nsubtree = "from.file"\npolicy = "/p/file"\n'
                        '[sampling]\ninterval = "2s"\n')
    cfg = load_config(p, environ={"GOVERNOR_SUBTREE": "from.env"},
                      overrides={"governor.policy": "/p/cli", "database.url": None})
    assert cfg.subtree == "from.env" and cfg.policy == "/p/cli" and cfg.sample_interval == 2.0


@pytest.mark.parametrize(("text", "words"), [
    ("[governor]\nsubtre = 'x'\n", "governor.subtre: unknown setting; did you mean "
                                   "governor.subtree?"),
    ("[sampling]\ninterval = 'soon'\n", "sampling.interval: 'soon' is not a duration"),
    ("[sampling]\ninterval = -1\n", "must be positive"),
    # found by trying: these passed and overflowed timedelta when the scheduler started
    ("[sampling]\ninterval = 1e308\n", "sampling.interval: '1e+308': a duration is at most"),
    (f"[sampling]\ninterval = {10**400}\n", "a duration must be finite"),
    ("[exporter]\nrequest_timeout = \"99999999999d\"\n", "exporter.request_timeout"),
    ("[governor]\nsubtree = '../etc'\n", "governor.subtree"),
    ("[governor]\nsubtree = '/'\n", "must not be the cgroup root"),
    ("[exporter]\nlisten = '9717'\n", "HOST:PORT"),
    ("[exporter]\nlisten = '127.0.0.1:99999'\n", "1..65535"),
    ("[database]\nurl = 'mysql://x'\n", "sqlite:////"),
    ("[governor]\nlog_format = 'xml'\n", "keyvalue, json"),
    ("[images]\nmax_layer_size = 0\n", "images.max_layer_size: 0: give a size of at least"),
    ("[images]\nmax_layer_size = '16 gigs'\n", "images.max_layer_size: '16 gigs'"),
    ("[images]\nmax_layer_entries = 0\n", "images.max_layer_entries: 0 is not a positive"),
    ("[images]\nmin_free_space = -1\n", "images.min_free_space: -1"),
    ("[images]\nmax_layer_sise = 1\n", "did you mean images.max_layer_size?"),
    ("[nope]\n", "nope: unknown setting"),
    ("[governor\n", "TOML syntax error"),
])
def test_bad_config_names_file_key_value(tmp_path: Path, text: str, words: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={})
    assert words in str(ei.value) and str(p) in str(ei.value)


def test_every_error_reported(tmp_path: Path) -> None:
    p = write(tmp_path, "[governor]\nsubtre = 'x'\n[sampling]\ninterval = 'x'\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={})
    assert "subtre" in str(ei.value) and "interval" in str(ei.value)


def test_explicit_missing_config_is_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml", environ={})


def test_cli_bad_config_exit_2_no_traceback(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path, "[sampling]\ninterval = 'soon'\n")
    assert main(["doctor", "--config", str(p)]) == 2
    err = capsys.readouterr().err
    assert "governor: error:" in err and "Traceback" not in err


def test_cli_usage_error_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--format", "xml"]) == 2
    assert main(["no-such-command"]) == 2


def test_doctor_on_hybrid_host_explains(tmp_path: Path) -> None:
    mi = tmp_path / "mountinfo"
    mi.write_text(HYBRID_MOUNTINFO)
    cfg = load_config(None, environ={}, missing_ok=True,
                      overrides={"governor.policy": str(tmp_path / "nope"),
                                 "database.url": f"sqlite:///{tmp_path}/g.db"})
    checks = {c.name: c for c in run_checks(cfg, mountinfo=str(mi))}
    mount = checks["cgroup2 mount"]
    assert not mount.ok
    assert "memory at /sys/fs/cgroup/memory" in mount.detail and "hybrid" in mount.detail
    assert "systemd.unified_cgroup_hierarchy=1" in mount.fix
    assert checks["database"].ok and not checks["policy"].ok
    assert "sandbox" in checks


def test_doctor_on_this_host_fails_with_reason(capsys: pytest.CaptureFixture[str]) -> None:
    # this development/CI machine is a hybrid host: doctor must explain and exit non-zero
    rc = main(["doctor", "--format", "json", "--cgroup-root", "/sys/fs/cgroup/unified"])
    out = capsys.readouterr().out
    assert rc == 1 and '"ok": false' in out


@pytest.mark.parametrize("url", [
    "postgresql+asyncpg://u:s3cret@h/x",   # a driver governor does not install
    "mysql://root:s3cret@h/x",
    "notaurl",
    "sqlitefoo:///x.db",
])
def test_database_url_of_a_driver_governor_lacks_is_a_clear_error(
        url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Found by trying: postgresql+asyncpg passed the check, then ended in 'unexpected
    ModuleNotFoundError' at connect."""
    rc = main(["db", "current", "--database", url])
    err = capsys.readouterr().err
    assert rc == 2
    assert "database.url" in err and "postgresql+psycopg://user@host/dbname" in err
    assert "s3cret" not in err and "Traceback" not in err and "unexpected" not in err
