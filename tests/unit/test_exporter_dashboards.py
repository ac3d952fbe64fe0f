"""Dashboards and alert rules: promtool checks and unit tests, and every expression names
only metrics the renderer writes.  (The kernel test runs each expression against a real
Prometheus that scraped a real governor.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from governor.exporter.render import ALL_METRICS

DASH = Path(__file__).resolve().parents[2] / "dashboards"
BOARDS = ("tenants-overview.json", "group-detail.json", "governor-health.json")
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "30s"}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but promtool is not installed (apt-get install prometheus)")
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return path


def rule_expressions(path: Path = DASH / "alerts.yml") -> dict[str, str]:
    """alert name -> expr, read from the rules file (single-line or ``|`` block exprs)."""
    out: dict[str, str] = {}
    lines = path.read_text().splitlines()
    name = None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"\s*- alert: (\S+)", line)
        if m:
            name = m[1]
        m = re.match(r"(\s*)expr: (.*)$", line)
        if m and name:
            if m[2].strip() == "|":
                block = []
                indent = len(m[1])
                i += 1
                while i < len(lines) and (len(lines[i]) - len(lines[i].lstrip()) > indent):
                    block.append(lines[i].strip())
                    i += 1
                out[name] = " ".join(block)
                continue
            out[name] = m[2].strip()
        i += 1
    return out


def dashboard_expressions() -> dict[str, str]:
    """``board/panel/refId`` -> expr with Grafana's variables made concrete ("All")."""
    out: dict[str, str] = {}
    for board in BOARDS:
        d = json.loads((DASH / board).read_text())
        for p in d["panels"]:
            for t in p["targets"]:
                out[f"{board}/{p['title']}/{t['refId']}"] = concrete(t["expr"])
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                q = v["query"]["query"]
                m = re.match(r"label_values\((.*), (\w+)\)$", q)
                assert m, q
                out[f"{board}/var {v['name']}"] = concrete(m[1])
    return out


def concrete(expr: str) -> str:
    for k, v in GRAFANA_VARS.items():
        expr = expr.replace(k, v)
    return re.sub(r'=~"\$(\w+)"', '=~".*"', expr)


def test_promtool_check_and_unit_test_rules() -> None:
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", str(DASH / "alerts.yml")],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 10 rules found" in check.stdout
    test = subprocess.run([tool, "test", "rules", str(DASH / "alerts_test.yml")],
                          capture_output=True, text=True, cwd=DASH, check=False)
    assert test.returncode == 0, test.stdout + test.stderr


def test_every_alert_has_a_unit_test() -> None:
    tested = set(re.findall(r"alertname: (\w+)", (DASH / "alerts_test.yml").read_text()))
    assert set(rule_expressions()) == tested
    assert len(tested) == 10


def test_dashboards_are_provisionable() -> None:
    for board in BOARDS:
        d = json.loads((DASH / board).read_text())
        names = {v["name"]: v for v in d["templating"]["list"]}
        assert names["datasource"]["type"] == "datasource"
        assert names["datasource"]["query"] == "prometheus"
        if board != "governor-health.json":
            assert names["tenant"]["query"]["query"].startswith("label_values(")
        if board == "group-detail.json":
            assert "group" in names["group"]["query"]["query"]
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)) and d["uid"].startswith("governor-")
        for p in d["panels"]:
            assert p["datasource"]["uid"] == "${datasource}"
            assert p["targets"] and all(t["expr"] for t in p["targets"])


def test_generated_files_are_up_to_date(tmp_path: Path) -> None:
    before = {b: (DASH / b).read_text() for b in BOARDS}
    subprocess.run([sys.executable, str(DASH / "generate.py")], check=True)
    assert {b: (DASH / b).read_text() for b in BOARDS} == before


def test_expressions_name_only_rendered_metrics() -> None:
    known = {m.name for m in ALL_METRICS}
    exprs = {**rule_expressions(), **dashboard_expressions()}
    assert len(exprs) > 40
    for where, expr in exprs.items():
        for name in re.findall(r"\bgovernor_\w+", expr):
            assert name in known, (where, name)


def recording_rules(path: Path = DASH / "recording.yml") -> dict[str, str]:
    """recorded name -> expr (single-line exprs)."""
    text = path.read_text()
    return dict(re.findall(r"- record: (\S+)\n\s+expr: (.+)", text))


def test_promtool_check_and_unit_test_recording_rules() -> None:
    """Issue #18: the fleet's billed cost is the sum of the nodes' shares."""
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", str(DASH / "recording.yml")],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 2 rules found" in check.stdout
    test = subprocess.run([tool, "test", "rules", str(DASH / "recording_test.yml")],
                          capture_output=True, text=True, cwd=DASH, check=False)
    assert test.returncode == 0, test.stdout + test.stderr


def test_recorded_series_of_the_dashboards_are_recorded() -> None:
    rules = recording_rules()
    assert set(rules) == {"governor:billed_cost:sum", "governor:billed_cost_all_tenants:sum"}
    known = {m.name for m in ALL_METRICS}
    for expr in rules.values():
        assert set(re.findall(r"\bgovernor_\w+", expr)) <= known, expr
    used = {name for expr in dashboard_expressions().values()
            for name in re.findall(r"\bgovernor:[\w:]+", expr)}
    assert used == set(rules)   # the fleet panel uses both, and nothing unrecorded
    tested = set(re.findall(r"expr: (governor:[\w:]+)",
                            (DASH / "recording_test.yml").read_text()))
    assert tested == set(rules)
