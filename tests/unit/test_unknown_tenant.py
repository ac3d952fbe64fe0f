"""An unknown tenant is the same usage error, exit 2 and the same words, from every command
that takes ``--tenant`` (issue #15, smaller ones: the exit codes differed by command)."""

from __future__ import annotations

from pathlib import Path

import pytest

from governor.cli import main
from governor.store.cli import run_db_upgrade

REPO = Path(__file__).resolve().parents[2]
POLICY = REPO / "examples" / "policy.d"


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('db')}/g.db"
    run_db_upgrade(url)
    return url


COMMANDS = {
    "usage": ["usage", "--period", "2026-11", "--tenant", "nosuch"],
    "bill": ["bill", "--period", "2026-11", "--tenant", "nosuch"],
    "events": ["events", "--tenant", "nosuch"],
    "ps": ["ps", "--tenant", "nosuch"],
    "launch (tenant)": ["launch", "--tenant", "nosuch", "--group", "web", "--", "true"],
}


@pytest.mark.parametrize("argv", COMMANDS.values(), ids=COMMANDS.keys())
def test_unknown_tenant_is_exit_2_with_one_message_everywhere(
        argv: list[str], database: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main([*argv[:1], "--database", database, "--policy", str(POLICY), *argv[1:]])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "unknown tenant 'nosuch'" in err, err
    assert "Traceback" not in err


def test_unknown_group_of_a_known_tenant_names_the_groups(
        database: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["launch", "--database", database, "--policy", str(POLICY),
               "--tenant", "acme", "--group", "nosuch", "--", "true"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "unknown group acme/nosuch: not in the policy" in err
    assert "acme/web" in err  # the groups there are, to spot the typo
