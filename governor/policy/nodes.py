"""Validating node costs: ``[node_costs]``, ``[node_classes.<name>]`` and
``[nodes."<name>"]`` (part of :mod:`governor.policy.loader`; billed by
:mod:`governor.billing.idle`, docs/policy.md "Node costs").

A node's cost comes from its class (``class = "<name>"``) or from its own
``cost_per_hour``, ``currency``, ``cpus`` and ``memory``, never both.  The capacity is
required: the database does not record what a node has (the ``nodes`` table holds its name
only), and a share of an unknown capacity is no share.  Node names are what the daemons
report (``[governor] node``, by default the host name): hostile strings, checked here
against :data:`NODE_NAME` before they reach a bill's resource ids.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final, cast

from governor.policy.context import (
    BadValue,
    Ctx,
    Doc,
    KeyPath,
    check_money,
    check_size,
    report_unknown,
)
from governor.policy.model import (
    OPENCOST_CPU_CORE_HOUR,
    OPENCOST_RAM_GIB_HOUR,
    IdleMode,
    NodeCost,
    NodeCosts,
)
from governor.policy.tenants import valid_name
from governor.policy.units import MAX, show

TOP_KEYS: Final = ("node_costs", "node_classes", "nodes")
SETTINGS_KEYS: Final = ("idle", "cpu_core_hour_weight", "memory_gib_hour_weight")
COST_KEYS: Final = ("cost_per_hour", "currency", "cpus", "memory")
NODE_KEYS: Final = ("class", *COST_KEYS)
IDLE_MODES: Final = ("unassigned", "split")
#: a node name: a host name or FQDN and the few more characters a node name in the
#: daemon's configuration may reasonably hold; at most 255 (``nodes.name``)
NODE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,254}\Z")
#: the most CPUs a node may declare (a sanity bound, far above any machine)
MAX_CPUS: Final = 1_000_000


@dataclass
class NodeState:
    """What the documents said so far (node tables may be spread over drop-ins)."""

    classes: dict[str, NodeCost] = field(default_factory=dict)
    class_home: dict[str, Doc] = field(default_factory=dict)
    #: node name -> (file, own cost or None, class name or None)
    nodes: dict[str, tuple[Doc, NodeCost | None, str | None]] = field(default_factory=dict)
    settings: dict[str, object] = field(default_factory=dict)
    settings_home: Doc | None = None
    ok: bool = True


def _cost(ctx: Ctx, base: KeyPath, raw: dict[str, object], what: str) -> NodeCost | None:
    """``cost_per_hour``, ``currency``, ``cpus`` and ``memory`` of a class or node."""
    ok = True
    for key in COST_KEYS:
        if key not in raw:
            hint = {"cost_per_hour": "a decimal string like \"0.50\"",
                    "currency": "an ISO 4217 code such as \"EUR\"",
                    "cpus": "the node's CPUs, e.g. 8",
                    "memory": "the node's memory, e.g. \"32G\""}[key]
            why = (": the database does not know a node's capacity"
                   if key in ("cpus", "memory") else "")
            ctx.add(base, None, f"{key} is missing from {what} ({hint}){why}")
            ok = False
    cost = Decimal(0)
    if "cost_per_hour" in raw:
        try:
            cost = check_money(raw["cost_per_hour"])
        except BadValue as exc:
            ctx.add((*base, "cost_per_hour"), raw["cost_per_hour"], str(exc))
            ok = False
    currency = raw.get("currency")
    if "currency" in raw and (not isinstance(currency, str)
                              or not re.fullmatch(r"[A-Z]{3}", currency)):
        ctx.add((*base, "currency"), currency,
                f"{show(currency)} is not an ISO 4217 code such as \"EUR\"")
        ok = False
    cpus = Decimal(0)
    if "cpus" in raw:
        try:
            cpus = _cpus(raw["cpus"])
        except BadValue as exc:
            ctx.add((*base, "cpus"), raw["cpus"], str(exc))
            ok = False
    memory = 0
    if "memory" in raw:
        try:
            size = check_size(raw["memory"])
            if size is MAX or size == 0:
                raise BadValue(f"{show(raw['memory'])} is not a capacity; give the node's "
                               "memory, e.g. \"32G\"")
            assert isinstance(size, int)
            memory = size
        except BadValue as exc:
            ctx.add((*base, "memory"), raw["memory"], str(exc))
            ok = False
    if not ok:
        return None
    assert isinstance(currency, str)
    return NodeCost(cost_per_hour=cost, currency=currency, cpus=cpus, memory=memory)


def _cpus(value: object) -> Decimal:
    hint = (f"cpus takes more than 0 and at most {MAX_CPUS}: an integer (8) or a decimal "
            "string (\"2.5\")")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadValue(f"{show(value)} is not a CPU count; {hint}")
    try:
        cpus = Decimal(value.strip() if isinstance(value, str) else value)
    except ArithmeticError:
        raise BadValue(f"{show(value)} is not a number; {hint}") from None
    if not cpus.is_finite() or cpus <= 0 or cpus > MAX_CPUS:
        raise BadValue(f"{show(value)} is out of range; {hint}")
    return cpus


def _table(ctx: Ctx, key: str, value: object, hint: str) -> dict[str, object] | None:
    if not isinstance(value, dict):
        ctx.add((key,), value, f"{key} is a table: {hint}")
        return None
    return cast(dict[str, object], value)


def parse_node_tables(ctx: Ctx, doc: Doc, state: NodeState) -> None:
    """Read one document's node tables into ``state`` (problems into ``ctx``)."""
    raw = _table(ctx, "node_costs", doc.data.get("node_costs", {}),
                 "[node_costs] with idle and the CPU:RAM weights")
    if raw:
        if state.settings_home is not None:
            ctx.add(("node_costs",), None, "[node_costs] is already defined in "
                                           f"{state.settings_home.name}")
            state.ok = False
        else:
            state.settings_home = doc
            _settings(ctx, raw, state)
    classes = _table(ctx, "node_classes", doc.data.get("node_classes", {}),
                     "[node_classes.<name>]") or {}
    for name, body in classes.items():
        base: KeyPath = ("node_classes", name)
        if name in state.class_home:
            ctx.add(base, None, f"node class {name} is already defined in "
                                f"{state.class_home[name].name}")
            state.ok = False
            continue
        state.class_home[name] = doc
        if not valid_name(ctx, base, name, "node class") or not isinstance(body, dict):
            if not isinstance(body, dict):
                ctx.add(base, body, "a node class is a table: [node_classes.<name>]")
            state.ok = False
            continue
        for key, value in body.items():
            if key not in COST_KEYS:
                report_unknown(ctx, base, key, value, COST_KEYS)
                state.ok = False
        got = _cost(ctx, base, body, f"node class {name}")
        if got is None:
            state.ok = False
            continue
        state.classes[name] = NodeCost(got.cost_per_hour, got.currency, got.cpus, got.memory,
                                       node_class=name)
    nodes = _table(ctx, "nodes", doc.data.get("nodes", {}), "[nodes.\"<node name>\"]") or {}
    for name, body in nodes.items():
        _node(ctx, doc, state, name, body)


def _settings(ctx: Ctx, raw: dict[str, object], state: NodeState) -> None:
    for key, value in raw.items():
        if key not in SETTINGS_KEYS:
            report_unknown(ctx, ("node_costs",), key, value, SETTINGS_KEYS)
            state.ok = False
            continue
        if key == "idle":
            if value not in IDLE_MODES:
                ctx.add(("node_costs", "idle"), value,
                        f"{show(value)} is not an idle mode: \"unassigned\" (one __idle__ "
                        "line per node) or \"split\" (shared by the tenants by usage)")
                state.ok = False
                continue
        else:
            try:
                check_money(value)
            except BadValue as exc:
                ctx.add(("node_costs", key), value, str(exc).replace("prices", "weights"))
                state.ok = False
                continue
        state.settings[key] = value


def _node(ctx: Ctx, doc: Doc, state: NodeState, name: str, body: object) -> None:
    base: KeyPath = ("nodes", name)
    if not NODE_NAME.match(name):
        ctx.add(base, name, f"{show(name)} is not a node name: 1 to 255 of letters, digits "
                            "and . _ : @ + -, starting with a letter or digit (the name a "
                            "daemon reports, [governor] node)")
        state.ok = False
        return
    if name in state.nodes:
        ctx.add(base, None, f"node {name} is already defined in {state.nodes[name][0].name}")
        state.ok = False
        return
    if not isinstance(body, dict):
        ctx.add(base, body, "a node is a table: [nodes.\"<node name>\"] with class = "
                            "\"<class>\" or its own cost_per_hour, currency, cpus, memory")
        state.ok = False
        return
    for key, value in body.items():
        if key not in NODE_KEYS:
            report_unknown(ctx, base, key, value, NODE_KEYS)
            state.ok = False
    if "class" in body:
        own = [k for k in COST_KEYS if k in body]
        cls = body["class"]
        if own:
            ctx.add(base, None, f"node {name} names a class and sets {', '.join(own)}: "
                                "give either class or its own cost_per_hour, currency, "
                                "cpus and memory")
            state.ok = False
        elif not isinstance(cls, str) or not cls:
            ctx.add((*base, "class"), cls, f"{show(cls)} is not a node class name")
            state.ok = False
        else:
            state.nodes[name] = (doc, None, cls)
        return
    got = _cost(ctx, base, body, f"node {name} (or give class = \"<node class>\")")
    if got is None:
        state.ok = False
        return
    state.nodes[name] = (doc, got, None)


def finish_nodes(ctx: Ctx, state: NodeState) -> NodeCosts:
    """The node costs of all documents; an unknown class is reported where it is named."""
    nodes: dict[str, NodeCost] = {}
    for name, (doc, own, cls) in state.nodes.items():
        if own is not None:
            nodes[name] = own
            continue
        assert cls is not None
        if cls in state.classes:
            nodes[name] = state.classes[cls]
        elif cls not in state.class_home:  # a class with errors was reported already
            close = difflib.get_close_matches(cls, sorted(state.class_home), n=1)
            hint = f"; did you mean {close[0]}?" if close else (
                "; no node classes are defined ([node_classes.<name>])"
                if not state.class_home else
                f"; defined node classes: {', '.join(sorted(state.class_home))}")
            ctx.add(("nodes", name, "class"), cls,
                    f"node class {show(cls)} does not exist{hint}", doc=doc)
    s = state.settings
    cpu_w = (check_money(s["cpu_core_hour_weight"]) if "cpu_core_hour_weight" in s
             else OPENCOST_CPU_CORE_HOUR)
    ram_w = (check_money(s["memory_gib_hour_weight"]) if "memory_gib_hour_weight" in s
             else OPENCOST_RAM_GIB_HOUR)
    if cpu_w == 0 and ram_w == 0:
        ctx.add(("node_costs",), None, "cpu_core_hour_weight and memory_gib_hour_weight "
                                       "are both 0: a node's cost cannot be split by usage "
                                       "(leave them out for OpenCost's 0.031611:0.004237)",
                doc=state.settings_home)
    return NodeCosts(nodes=nodes, idle=cast(IdleMode, s.get("idle", "unassigned")),
                     cpu_core_hour_weight=cpu_w, memory_gib_hour_weight=ram_w)
