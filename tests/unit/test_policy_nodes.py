"""Node costs in the policy (governor/policy/nodes.py): ``[node_costs]``,
``[node_classes.<name>]`` and ``[nodes."<name>"]``, validated with file, key and value."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from governor.policy import PolicyInvalid, Problem, load_policy, parse_policy
from governor.policy.model import OPENCOST_CPU_CORE_HOUR, OPENCOST_RAM_GIB_HOUR, NodeCost

BASE = """[plans.p]
currency = "EUR"
cpu_core_hour = "0.04"
memory_gib_hour = "0.005"
io_read_gib = "0"
io_write_gib = "0"

[tenants.acme]
plan = "p"
"""
CLASSES = """[node_classes.big]
cost_per_hour = "0.50"
currency = "EUR"
cpus = 8
memory = "32G"
"""
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policy.d"


def _problems(nodes: str) -> list[Problem]:
    with pytest.raises(PolicyInvalid) as exc:
        parse_policy([("base.toml", BASE), ("nodes.toml", nodes)])
    return list(exc.value.problems)


def _one(nodes: str) -> Problem:
    got = _problems(nodes)
    assert len(got) == 1, [str(p) for p in got]
    return got[0]


def test_classes_nodes_and_settings() -> None:
    p = parse_policy([("base.toml", BASE), ("nodes.toml", CLASSES + """
[node_costs]
idle = "split"
cpu_core_hour_weight = "3"
memory_gib_hour_weight = 1

[nodes."w1.example.com"]
class = "big"

[nodes.w2]
cost_per_hour = "0.3"
currency = "USD"
cpus = "2.5"
memory = "8G"
""")])
    nc = p.node_costs
    assert nc.idle == "split"
    assert (nc.cpu_core_hour_weight, nc.memory_gib_hour_weight) == (Decimal(3), Decimal(1))
    assert nc.nodes == {
        "w1.example.com": NodeCost(Decimal("0.50"), "EUR", Decimal(8), 32 << 30, "big"),
        "w2": NodeCost(Decimal("0.3"), "USD", Decimal("2.5"), 8 << 30, None)}


def test_defaults_are_unassigned_and_opencosts_weights() -> None:
    nc = parse_policy([("a.toml", BASE + CLASSES + '[nodes.w1]\nclass = "big"\n')]).node_costs
    assert nc.idle == "unassigned"
    assert nc.cpu_core_hour_weight == OPENCOST_CPU_CORE_HOUR == Decimal("0.031611")
    assert nc.memory_gib_hour_weight == OPENCOST_RAM_GIB_HOUR == Decimal("0.004237")
    assert parse_policy([("a.toml", BASE)]).node_costs.nodes == {}


def test_unknown_class_is_a_clear_error() -> None:
    p = _one(CLASSES + '\n[nodes.w1]\nclass = "bgi"\n')
    assert (p.file, p.key, p.value, p.line) == ("nodes.toml", "nodes.w1.class", "bgi", 8)
    assert p.message == 'node class "bgi" does not exist; did you mean big?'
    p = _one('[nodes.w1]\nclass = "big"\n')
    assert p.message.endswith("no node classes are defined ([node_classes.<name>])")


@pytest.mark.parametrize("name", [
    "../etc", "a/b", "a\nb", "", " w1", "w1 ", "-w1", ".w1", "w\x00", "x" * 256,
    "w\u202e1", "ü-node", "a\tb", 'a"b',
])
def test_hostile_node_names_are_refused(name: str) -> None:
    import json

    p = _one(CLASSES + f"\n[nodes.{json.dumps(name)}]\nclass = \"big\"\n")
    assert p.key.startswith("nodes.") and p.value == name
    assert "is not a node name: 1 to 255 of letters, digits and . _ : @ + -" in p.message


def test_long_fqdn_is_a_node_name() -> None:
    name = ".".join(["a" * 60] * 4)  # 243 characters
    nc = parse_policy([("a.toml", BASE + CLASSES + f'[nodes."{name}"]\nclass = "big"\n')])
    assert list(nc.node_costs.nodes) == [name]


@pytest.mark.parametrize(("text", "key", "fragment"), [
    ('[node_costs]\nidle = "spread"\n', "node_costs.idle",
     '"spread" is not an idle mode: "unassigned"'),
    ("[node_costs]\ncpu_core_hour_weight = 0.5\n", "node_costs.cpu_core_hour_weight",
     "is a float"),
    ('[node_costs]\nidel = "split"\n', "node_costs.idel", "unknown key idel; did you mean idle?"),
    ('[node_costs]\ncpu_core_hour_weight = "0"\nmemory_gib_hour_weight = "0"\n',
     "node_costs", "are both 0"),
    ('[node_classes.big]\ncost_per_hour = "1"\ncurrency = "EUR"\ncpus = 8\n',
     "node_classes.big", "memory is missing from node class big"),
    ('[node_classes.big]\ncost_per_hour = "-1"\ncurrency = "EUR"\ncpus = 8\nmemory = "1G"\n',
     "node_classes.big.cost_per_hour", "negative"),
    ('[node_classes.big]\ncost_per_hour = "1"\ncurrency = "eur"\ncpus = 8\nmemory = "1G"\n',
     "node_classes.big.currency", "not an ISO 4217 code"),
    ('[node_classes.big]\ncost_per_hour = "1"\ncurrency = "EUR"\ncpus = 0\nmemory = "1G"\n',
     "node_classes.big.cpus", "cpus takes more than 0"),
    ('[node_classes.big]\ncost_per_hour = "1"\ncurrency = "EUR"\ncpus = 2.5\nmemory = "1G"\n',
     "node_classes.big.cpus", "not a CPU count"),
    ('[node_classes.big]\ncost_per_hour = "1"\ncurrency = "EUR"\ncpus = 8\nmemory = "max"\n',
     "node_classes.big.memory", "not a capacity"),
    ('[node_classes."a/b"]\ncost_per_hour = "1"\ncurrency = "EUR"\ncpus = 8\nmemory = "1G"\n',
     'node_classes."a/b"', "is not a safe node class name"),
    (CLASSES + "gpus = 1\n", "node_classes.big.gpus", "unknown key gpus"),
    (CLASSES + '[nodes.w1]\nclass = "big"\ncpus = 4\n', "nodes.w1",
     "node w1 names a class and sets cpus: give either class or its own"),
    ('[nodes.w1]\ncost_per_hour = "1"\ncurrency = "EUR"\nmemory = "4G"\n', "nodes.w1",
     "cpus is missing from node w1 (or give class = \"<node class>\") (the node's CPUs, "
     "e.g. 8): the database does not know a node's capacity"),
    ('nodes = 3\n', "nodes", "nodes is a table"),
    ('[nodes.w1]\nclass = 3\n', "nodes.w1.class", "is not a node class name"),
])
def test_policy_errors(text: str, key: str, fragment: str) -> None:
    p = _one(text)
    assert p.file == "nodes.toml" and p.key == key, str(p)
    assert fragment in p.message, p.message


def test_a_misspelt_key_is_named_with_the_right_one() -> None:
    got = {(p.key, p.message) for p in _problems(CLASSES.replace("cost_per_hour",
                                                                 "cost_per_hours"))}
    assert got == {
        ("node_classes.big.cost_per_hours", "unknown key cost_per_hours; did you mean "
                                            "cost_per_hour?"),
        ("node_classes.big", 'cost_per_hour is missing from node class big (a decimal '
                             'string like "0.50")')}


def test_a_node_is_defined_in_one_file_and_classes_span_files() -> None:
    docs = [("base.toml", BASE), ("a.toml", CLASSES), ("b.toml", '[nodes.w1]\nclass = "big"\n'),
            ("c.toml", '[nodes.w1]\nclass = "big"\n')]
    with pytest.raises(PolicyInvalid) as exc:
        parse_policy(docs)
    (p,) = exc.value.problems
    assert p.file == "c.toml" and p.message == "node w1 is already defined in b.toml"
    assert list(parse_policy(docs[:3]).node_costs.nodes) == ["w1"]


def test_digest_unchanged_without_node_costs_and_changed_with_them() -> None:
    # examples/policy.d's digest before node costs existed (governor at 513cacd)
    assert load_policy([EXAMPLES]).digest == (
        "971df2402b172ac2163b5ce916ab5ee96d9d838c021afe2c3ba59aa3e0f97e4b")
    plain = parse_policy([("a.toml", BASE)]).digest
    with_nodes = parse_policy([("a.toml", BASE + CLASSES + '[nodes.w1]\nclass = "big"\n')])
    assert with_nodes.digest != plain
    # classes no node uses bill nothing: the digest does not change
    assert parse_policy([("a.toml", BASE + CLASSES)]).digest == plain
    cheaper = with_nodes.digest != parse_policy([("a.toml", BASE + CLASSES.replace(
        "0.50", "0.40") + '[nodes.w1]\nclass = "big"\n')]).digest
    assert cheaper


def test_the_example_of_docs_policy_md_is_valid() -> None:
    import re

    doc = (EXAMPLES.parents[1] / "docs" / "policy.md").read_text()
    example = re.search(r"```toml\n(.*?)```", doc[doc.index("## Node costs"):], re.S)
    assert example is not None
    nc = parse_policy([("base.toml", BASE), ("nodes.toml", example.group(1))]).node_costs
    assert nc.nodes["worker-1.example.com"].node_class == "big"
    assert nc.nodes["worker-2"].cpus == Decimal("2.5")
