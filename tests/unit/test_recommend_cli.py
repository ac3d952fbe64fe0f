"""``governor recommend`` from the command line: the three formats, the drop-in read back
by the policy loader and shown by ``governor policy plan``, and bad input."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.orm import Session

from governor.cgroupfs.files import CgroupFS
from governor.cli import main, main_group
from governor.policy import load_policy
from governor.recommend.dropin import dump_toml
from governor.recommend.rules import MIB
from tests.helpers.db import db_url, engine, session  # noqa: F401
from tests.unit.cgroupfs_fake import LEAF_FILES, create_child
from tests.unit.test_recommend_service import sample, write

PLANS = """[plans.std]
currency = "EUR"
cpu_core_hour = "0.04"
memory_gib_hour = "0.005"
io_read_gib = "0"
io_write_gib = "0"
"""
ACME = """# acme: one group far too big, one far too small
[tenants.acme]
plan = "std"
memory.max = "1G"

[tenants.acme.groups.big]
memory.max = "512M"
cpu.weight = 100

[[tenants.acme.groups.big.match]]
comm = "big*"

[tenants.acme.groups.small]
memory = { max = "40M", low = "8M" }
cpus = 0.1
"""
GLOBEX = """[tenants.globex]
plan = "std"
[tenants.globex.groups.db]
memory.max = "2G"
"""


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    d = tmp_path / "policy.d"
    d.mkdir()
    (d / "00-plans.toml").write_text(PLANS)
    (d / "10-acme.toml").write_text(ACME)
    (d / "20-globex.toml").write_text(GLOBEX)
    return d


@pytest.fixture
def history(session: Session) -> None:  # noqa: F811
    """Half an hour up to now: big uses 20 MiB and 0.05 core; small is held at 39 MiB by
    its 40M, OOM-killed, under memory pressure, and throttled at its 0.1 core."""
    start = datetime.now(UTC) - timedelta(minutes=30)
    write(session, [s for i in range(180) for s in (
        sample("big", i, cgroup_id=1, mem=20 * MIB, cores=0.05, start=start),
        sample("small", i, cgroup_id=2, mem=39 * MIB, cores=0.1, throttled=0.9,
               oom_kills=i // 60, mem_pressure=0.3, start=start))])


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main_group, ["recommend", *args], env=env)


@pytest.fixture(autouse=True)
def _no_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("GOVERNOR_CONFIG", "GOVERNOR_POLICY", "GOVERNOR_DATABASE"):
        monkeypatch.delenv(var, raising=False)


def test_table(engine, db_url, history, policy_dir) -> None:  # noqa: F811
    res = run("--database", db_url, "--policy", str(policy_dir), "--window", "1h")
    assert res.exit_code == 0, res.output
    out = res.output
    assert "working set: memory.current" in out and "headroom 20%" in out
    assert "acme/big" in out and "over-provisioned" in out
    assert "acme/small" in out and "starved" in out
    assert "globex/db" in out and "no-data" in out
    assert "acme/small: 2 OOM kills in the window" in out
    assert "acme/small: cpu throttled in 90.0% of periods (over 10%)" in out
    assert "acme/big: memory.max 512M is 25.6x the p99 working set 20M (over 2x)" in out


def test_json(engine, db_url, history, policy_dir) -> None:  # noqa: F811
    res = run("--database", db_url, "--policy", str(policy_dir), "--window", "1h",
              "--headroom", "50%", "--format", "json", "--tenant", "acme")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["window_seconds"] == 3600 and doc["headroom"] == 0.5
    by = {g["group"]: g for g in doc["groups"]}
    assert set(by) == {"big", "small"}
    assert by["big"]["flags"] == ["over-provisioned"]
    assert by["big"]["suggest"]["memory.high"] == str(30 * MIB)   # 20 MiB * 1.5
    assert by["big"]["current"]["memory.max"] == str(512 * MIB)
    assert by["big"]["limits_from"] == "policy"
    assert by["small"]["flags"] == ["starved"]
    assert by["small"]["working_set_basis"] == "memory.current"


def test_json_without_a_policy_uses_no_limits(engine, db_url, history,  # noqa: F811
                                              tmp_path: Path) -> None:
    res = run("--database", db_url, "--policy", str(tmp_path / "none"), "--window", "1h",
              "--format", "json")
    assert res.exit_code == 0, res.output
    by = {g["group"]: g for g in json.loads(res.output)["groups"]}
    assert by["big"]["flags"] == [] and by["big"]["current"] == {}
    assert by["small"]["flags"] == ["starved"]


def _fake_tree(mount: Path) -> None:
    """The kernel as the policy left it: the limits of 10-acme.toml written."""
    for k, v in LEAF_FILES.items():
        (mount / k).write_text(v)
    sub = create_child(mount, "governor.slice")
    for tenant, groups in (("acme", ("big", "small")), ("globex", ("db",))):
        t = create_child(sub, tenant)
        for g in groups:
            create_child(t, g)
    acme = sub / "acme"
    (acme / "memory.max").write_text(f"{1 << 30}\n")
    (acme / "big/memory.max").write_text(f"{512 * MIB}\n")
    (acme / "small/memory.max").write_text(f"{40 * MIB}\n")
    (acme / "small/memory.low").write_text(f"{8 * MIB}\n")
    (acme / "small/cpu.max").write_text("10000 100000\n")
    (sub / "globex/db/memory.max").write_text(f"{2 << 30}\n")


def _plan(policy: Path, mount: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setattr("governor.driver.open_cgroup",
                        lambda cfg: CgroupFS(mount, verify=False))
    res = CliRunner().invoke(main_group, ["policy", "plan", "--policy", str(policy),
                                          "--cgroup-root", str(mount)],
                             env={"GOVERNOR_CGROUP_DRIVER": "cgroupfs"})
    assert res.exit_code == 0, res.output
    return [line for line in res.output.splitlines() if line.startswith("~ set")]


def test_toml_drop_in_loads_and_policy_plan_shows_the_writes(
        engine, db_url, history, policy_dir, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    res = run("--database", db_url, "--policy", str(policy_dir), "--window", "1h",
              "--format", "toml")
    assert res.exit_code == 0, res.output
    text = res.output
    assert f"remove it from {policy_dir / '10-acme.toml'}" in text
    assert "# acme/big (over-provisioned): memory.max 536870912 -> " in text
    assert "\n[tenants.acme.groups.big]\nmemory.max = \"" in text
    data = tomllib.loads(text)
    assert set(data["tenants"]) == {"acme"}            # globex: no data, not in it
    big = data["tenants"]["acme"]["groups"]["big"]
    small = data["tenants"]["acme"]["groups"]["small"]
    assert big["match"] == [{"comm": "big*"}]            # the rest is kept as it was
    assert data["tenants"]["acme"]["plan"] == "std"
    assert "cpus" not in small and small["memory"]["low"] == "8M"
    # the operator's steps: the tenant's file out, the drop-in in, then policy plan
    mount = tmp_path / "cg"
    mount.mkdir()
    _fake_tree(mount)
    assert _plan(policy_dir, mount, monkeypatch) == []   # the kernel matches the policy
    new = tmp_path / "new.d"
    shutil.copytree(policy_dir, new)
    (new / "10-acme.toml").unlink()
    (new / "50-recommend.toml").write_text(text)
    pol = load_policy([new])
    big_limits = pol.tenants["acme"].groups["big"].limits
    assert big_limits.memory_max == int(big["memory"]["max"].removesuffix("M")) * MIB
    assert big_limits.memory_max < 40 * MIB
    sets = _plan(new, mount, monkeypatch)
    joined = "\n".join(sets)
    assert f"/governor.slice/acme/big memory.max: {512 * MIB} -> {big_limits.memory_max}" \
        in joined
    assert "/governor.slice/acme/big memory.high: max -> " in joined
    assert f"/governor.slice/acme/small memory.max: {40 * MIB} -> " in joined
    assert "/governor.slice/acme/small cpu.max: 10000 100000 -> 12000 100000" in joined
    assert "globex" not in joined


def test_toml_that_does_not_fit_the_tenant_says_why(engine, db_url, history,  # noqa: F811
                                                    policy_dir: Path) -> None:
    # a tenant cap below a group's suggestion: loads, with the loader's warning said
    (policy_dir / "10-acme.toml").write_text(ACME.replace('memory.max = "1G"',
                                                          'memory.max = "45M"', 1)
                                             .replace('"512M"', '"40M"'))
    res = run("--database", db_url, "--policy", str(policy_dir), "--window", "1h",
              "--format", "toml")
    assert res.exit_code == 0, res.output
    assert "# WARNING: recommend.toml" in res.output
    assert "is above the tenant's memory.max (45M)" in res.output
    # a protection above the suggested memory.max: the drop-in would not load
    (policy_dir / "10-acme.toml").write_text(ACME.replace(
        'cpu.weight = 100', 'cpu.weight = 100\nmemory.low = "64M"'))
    res = run("--database", db_url, "--policy", str(policy_dir), "--window", "1h",
              "--format", "toml")
    assert res.exit_code == 1
    assert "# PROBLEM: recommend.toml" in res.output
    assert "memory.low (64M) is above memory.max" in res.output
    assert "the drop-in does not load with the policy: 1 problem(s)" in res.output


def test_toml_without_a_policy_file_is_an_error(engine, db_url, history,  # noqa: F811
                                                tmp_path: Path) -> None:
    res = run("--database", db_url, "--policy", str(tmp_path / "missing.toml"),
              "--window", "1h", "--format", "toml")
    assert res.exit_code != 0
    assert "missing.toml" in str(res.exception) or "missing.toml" in res.output


@pytest.mark.parametrize(("args", "message"), [
    (["--window", "7"], "--window '7': give a positive duration"),
    (["--window", "-1d"], "--window '-1d'"),
    (["--headroom", "lots"], "--headroom 'lots': give a percentage from 0% to 1000%"),
    (["--tenant", "nobody"], "unknown tenant 'nobody'"),
    (["--tenant", "acme", "--group", "nope"], "unknown group acme/nope"),
    (["--group", "big"], "--group 'big': give its tenant too"),
])
def test_bad_input_names_the_option_and_value(engine, db_url, history, policy_dir,  # noqa: F811
                                              args: list[str], message: str) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["recommend", "--database", db_url, "--policy", str(policy_dir),
                     "--window", "1h", *args])
    assert code == 2
    assert message in err.getvalue()
    assert "Traceback" not in err.getvalue()


def test_bad_format_is_a_usage_error() -> None:
    res = run("--format", "yaml")
    assert res.exit_code == 2 and "yaml" in res.output


@pytest.mark.parametrize("data", [
    {"a": 1, "b": "x\"y", "c": [1, 2], "d": {"e": True, "f": {"g": 1.5}}},
    {"t": {"one": {"k": "v"}, "arr": [{"x": 1}, {"y": {"z": 2}}]}},
    {"q": {"needs quoting": {"memory.max": "1M"}}, "empty": {}},
])
def test_dump_toml_round_trips(data: dict[str, object]) -> None:
    assert tomllib.loads(dump_toml(data)) == data


@pytest.mark.parametrize("name", ["00-plans.toml", "10-acme.toml", "20-globex.toml"])
def test_dump_toml_keeps_the_policy_layout(name: str) -> None:
    """The example policy reads back the same, tenants and groups as [tables] and their
    keys dotted as an operator writes them."""
    data = tomllib.loads((Path(__file__).parents[2] / "examples/policy.d" / name).read_text())
    text = dump_toml(data)
    assert tomllib.loads(text) == data
    if name == "10-acme.toml":
        assert "[tenants.acme.groups.web]\nmemory.max = \"256M\"\n" in text
        assert "[[tenants.acme.groups.web.match]]\n" in text


def test_toml_with_nothing_to_suggest_says_so(engine, db_url, history,  # noqa: F811
                                              policy_dir: Path) -> None:
    res = run("--database", db_url, "--policy", str(policy_dir), "--window", "1h",
              "--format", "toml", "--tenant", "globex")
    assert res.exit_code == 1
    assert "no suggestion for a tenant the policy defines: nothing to write" in str(
        res.exception)


@pytest.mark.parametrize(("group", "file", "value", "expected"), [
    ({"cpus": 0.5, "pids": {"max": 8}}, "cpu.max", "1000 100000",
     {"pids": {"max": 8}, "cpu": {"max": "1000 100000"}}),
    ({"cpu": {"shares": 512, "max": "1"}}, "cpu.weight", 59,
     {"cpu": {"max": "1", "weight": 59}}),
    ({"memory": {"max": "1G", "low": "8M"}}, "memory.max", "27M",
     {"memory": {"max": "27M", "low": "8M"}}),
    ({"memory.max": "1G"}, "memory.max", "27M", {"memory": {"max": "27M"}}),
])
def test_a_suggestion_replaces_every_spelling(group: dict[str, object], file: str,
                                              value: object,
                                              expected: dict[str, object]) -> None:
    from governor.recommend.dropin import _set

    _set(group, file, value)
    assert group == expected
