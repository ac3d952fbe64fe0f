"""``governor policy check``: output formats and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import click
from click.testing import CliRunner

from governor.policy.cli import policy

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policy.d"
BAD = """\
[tenants.acme]
plan = "gold"
[tenants.acme.groups.web]
memory.max = "12XB"
memory.maxx = "1G"
"""
WARN = """\
[tenants.acme]
memory.max = "1G"
[tenants.acme.groups.web]
memory.max = "2G"
"""


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(policy, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_policy_is_a_click_group_with_check() -> None:
    assert isinstance(policy, click.Group)
    assert "check" in policy.commands


def test_check_valid_examples_prints_a_summary() -> None:
    code, out, _ = run("check", str(EXAMPLES))
    assert code == 0
    assert out.startswith("policy valid: 2 tenants, 4 groups, 2 plans from 3 files (digest ")


def test_check_invalid_prints_every_problem(tmp_path: Path) -> None:
    f = tmp_path / "acme.toml"
    f.write_text(BAD)
    code, out, _ = run("check", str(f))
    assert code == 1
    lines = out.splitlines()
    assert lines == [
        f'{f}:2: tenants.acme.plan: plan "gold" does not exist; no plans are defined',
        f'{f}:4: tenants.acme.groups.web.memory.max: "12XB" is not a size; use bytes or a '
        "number with K, M, G or T",
        f"{f}:5: tenants.acme.groups.web.memory.maxx: unknown key memory.maxx; did you mean "
        "memory.max?",
        "policy invalid: 3 errors, 0 warnings",
    ]


def test_check_json_is_a_stable_list(tmp_path: Path) -> None:
    f = tmp_path / "acme.toml"
    f.write_text(BAD)
    code, out, err = run("check", "--format", "json", str(f))
    assert code == 1
    data = json.loads(out)
    assert isinstance(data, list) and len(data) == 3
    assert all(list(item) == ["file", "line", "key", "value", "message", "severity"]
               for item in data)
    assert [item["line"] for item in data] == [2, 4, 5]
    assert data[1] == {
        "file": str(f), "line": 4, "key": "tenants.acme.groups.web.memory.max",
        "value": "12XB",
        "message": '"12XB" is not a size; use bytes or a number with K, M, G or T',
        "severity": "error",
    }
    assert "policy invalid: 3 errors" in err
    # running twice gives the same bytes
    assert run("check", "--format", "json", str(f))[1] == out


def test_check_warnings_keep_exit_zero(tmp_path: Path) -> None:
    f = tmp_path / "w.toml"
    f.write_text(WARN)
    code, out, _ = run("check", str(f))
    assert code == 0
    first, summary = out.splitlines()
    assert "warning: memory.max (2G) is above the tenant's memory.max (1G)" in first
    assert summary.startswith("policy valid: 1 tenant, 1 group, 0 plans from 1 file")
    code, out, _ = run("check", "--format", "json", str(f))
    assert code == 0 and json.loads(out)[0]["severity"] == "warning"


def test_usage_errors_exit_two(tmp_path: Path) -> None:
    assert run("check")[0] == 2
    assert run("check", str(tmp_path / "missing.toml"))[0] == 2
    assert run("check", "--format", "xml", str(EXAMPLES))[0] == 2
