"""Issue #15 item 10 (and the `db upgrade` directories): with the database unreachable,
unwritable or read-only, every command that reads or migrates it ends in one clear error
-- which URL (password masked), what failed, the fix -- and exit code 2, never a
traceback and never the password."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from governor.cli import main
from governor.store.db import upgrade

REPO = Path(__file__).resolve().parents[2]
POLICY = str(REPO / "examples" / "policy.d")
PG = "postgresql://u:s3cret@127.0.0.1:1/x"
NOBODY = 65534

COMMANDS = [
    ["db", "upgrade"],
    ["db", "current"],
    ["usage", "--period", "2026-11"],
    ["events"],
    ["bill", "--period", "2026-11", "--policy", POLICY],
]


def _cli(argv: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capfd.readouterr()
    return rc, out, err


def _as_other_user(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """``governor ARGV`` as an unprivileged user when root (root ignores file modes): in a
    forked child with its effective uid and gid set to nobody's, so the interpreter (whose
    installation nobody may not read) is already loaded."""
    import _strptime  # noqa: F401  (datetime.strptime's, loaded on first use)

    import governor.billing.cli
    import governor.oom.cli
    import governor.policy
    import governor.store.cli  # noqa: F401  (imported before the fork, see above)
    from governor.store.db import head_revision

    head_revision()  # loads the migration scripts
    out_f, err_f = cwd / ".out", cwd / ".err"
    pid = os.fork()
    if pid == 0:  # the child: never returns
        rc = 70
        try:
            sys.stdout = out_f.open("w")
            sys.stderr = err_f.open("w")
            if os.geteuid() == 0:
                os.setegid(NOBODY)
                os.seteuid(NOBODY)
            rc = main(argv)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(rc)
    _, status = os.waitpid(pid, 0)
    out, err = out_f.read_text(), err_f.read_text()
    out_f.unlink()
    err_f.unlink()
    return os.waitstatus_to_exitcode(status), out, err


def _clear(rc: int, out: str, err: str, *, action: str, shown: str) -> None:
    assert rc == 2, (out, err)
    assert "Traceback" not in out + err
    assert "s3cret" not in out + err
    assert f"governor: error: cannot {action} the database {shown}" in err, err
    assert "Fix: " in err


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_unreachable_postgres_is_a_clear_error_without_the_password(
        argv: list[str], capfd: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _cli([*argv, "--database", PG], capfd)
    _clear(rc, out, err, action="connect to", shown="postgresql+psycopg://u:***@127.0.0.1:1/x")
    assert "Connection refused" in err and "127.0.0.1:1" in err


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_sqlite_path_that_cannot_exist_is_a_clear_error(
        argv: list[str], tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "wall").write_text("a file, not a directory\n")
    url = f"sqlite:///{tmp_path}/wall/db/governor.db"
    rc, out, err = _cli([*argv, "--database", url], capfd)
    _clear(rc, out, err, action="connect to", shown=url)
    assert "[ENOTDIR]" in err and f"make sure the directory {tmp_path}/wall/db exists" in err


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can enter, owned by us, not writable by others."""
    d = Path(tempfile.mkdtemp(prefix="governor-dberr-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        for p in (d, *d.rglob("*")):
            p.chmod(0o755 if p.is_dir() else 0o644)
        shutil.rmtree(d)


def _lock_down(d: Path) -> None:
    """Make ``d`` and its files read-only for the user _as_other_user runs as."""
    if os.geteuid() != 0:
        for p in d.iterdir():
            p.chmod(0o444)
        d.chmod(0o555)


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_read_only_sqlite_file_is_a_clear_error(argv: list[str], shared_dir: Path) -> None:
    db = shared_dir / "governor.db"
    upgrade(f"sqlite:///{db}")
    for extra in ("-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)
    db.chmod(0o400)  # its owner may read it, nobody may write it
    if os.geteuid() == 0:
        os.chown(db, NOBODY, NOBODY)
    _lock_down(shared_dir)
    rc, out, err = _as_other_user([*argv, "--database", f"sqlite:///{db}"], shared_dir)
    assert rc == 2, (out, err)
    assert "Traceback" not in out + err
    assert f"the database sqlite:///{db}: " in err and "Fix: make " in err, err
    assert "readonly database" in err and f"make {db} (and its -wal and -shm files) and its" \
        f" directory {shared_dir} writable by uid" in err


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_unwritable_sqlite_directory_is_a_clear_error(argv: list[str],
                                                      shared_dir: Path) -> None:
    _lock_down(shared_dir)
    db = shared_dir / "sub" / "governor.db"
    rc, out, err = _as_other_user([*argv, "--database", f"sqlite:///{db}"], shared_dir)
    assert rc == 2, (out, err)
    assert "Traceback" not in out + err
    assert f"cannot connect to the database sqlite:///{db}: [EACCES]" in err, err
    assert f"make sure the directory {db.parent} exists" in err


def test_db_upgrade_names_the_directories_it_creates(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "a" / "b" / "governor.db"
    rc, out, err = _cli(["db", "upgrade", "--database", f"sqlite:///{db}"], capfd)
    assert rc == 0, err
    assert err.splitlines() == [
        f"governor: created directory {tmp_path / 'a'} (mode 0700) for the database",
        f"governor: created directory {tmp_path / 'a' / 'b'} (mode 0700) for the database"]
    assert (tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o700
    rc, out, err = _cli(["db", "upgrade", "--database", f"sqlite:///{db}"], capfd)
    assert rc == 0 and err == "" and "already at" in out
