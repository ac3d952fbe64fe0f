"""Read policy files (a file, or a ``policy.d`` directory of drop-ins) into a :class:`Policy`.

Policy files are hostile input read by a root daemon: nothing here may raise anything but
:class:`PolicyInvalid`, and every problem is collected (with file, key, value and line where
possible) instead of stopping at the first.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path

from governor.controllers.base import Host
from governor.policy.context import (
    PRICE_FIELDS,
    Ctx,
    DeviceResolver,
    Doc,
    KeyPath,
    report_unknown,
    stat_block_device,
)
from governor.policy.files import MAX_FILE_BYTES, parse_text, read_paths
from governor.policy.matching import check_overlaps
from governor.policy.model import (
    ContainerMatch,
    MatchRule,
    NodeCosts,
    Policy,
    PricePlan,
    Tenant,
)
from governor.policy.nodes import TOP_KEYS as NODE_TOP_KEYS
from governor.policy.nodes import NodeState, finish_nodes, parse_node_tables
from governor.policy.plans import parse_plan
from governor.policy.problems import PolicyInvalid, Problem
from governor.policy.tenants import parse_tenant
from governor.policy.units import show


def _decimal_text(d: Decimal) -> str:
    return format(d.normalize(), "f")


def _node_canon(costs: NodeCosts) -> dict[str, object]:
    """Node costs in the digest, only when some are declared: a policy without them keeps
    the digest it had."""
    if not costs.nodes:
        return {}
    return {"node_costs": {
        "idle": costs.idle, "cpu_core_hour_weight": _decimal_text(costs.cpu_core_hour_weight),
        "memory_gib_hour_weight": _decimal_text(costs.memory_gib_hour_weight),
        "nodes": {n: {"cost_per_hour": _decimal_text(c.cost_per_hour),
                      "currency": c.currency, "cpus": _decimal_text(c.cpus),
                      "memory": c.memory, "class": c.node_class}
                  for n, c in sorted(costs.nodes.items())}}}


def _digest(tenants: Mapping[str, Tenant], plans: Mapping[str, PricePlan],
            node_costs: NodeCosts | None = None) -> str:
    def rule(r: MatchRule) -> dict[str, object]:
        out: dict[str, object] = {}
        for k, v in r.fields().items():
            out[k] = {"pidns": v.pidns, "init": v.init} if isinstance(v, ContainerMatch) else v
        return out

    canon = {
        "plans": {
            p.name: {
                "currency": p.currency,
                "memory_basis": p.memory_basis,
                "versions": [
                    {"effective": v.effective.isoformat() if v.effective else None,
                     # storage_gib_hour only when priced: a policy from before it keeps
                     # the digest its applied versions were recorded under
                     **{f: _decimal_text(getattr(v, f)) for f in PRICE_FIELDS
                        if f != "storage_gib_hour" or getattr(v, f)},
                     # the registered controllers' prices likewise, only when priced
                     **{k: _decimal_text(p) for k, p in sorted(v.quantity_prices.items())
                        if p}}
                    for v in p.versions
                ],
            }
            for p in plans.values()
        },
        "tenants": {
            t.name: {
                "plan": t.plan,
                "limits": t.limits.files(),
                "groups": {
                    g.name: {
                        "limits": g.limits.files(),
                        "match": [rule(r) for r in g.match],
                        "oom": {"group_kill": g.oom.group_kill,
                                "actions": list(g.oom.actions),
                                "pressure": [[str(k), v] for k, v in g.oom.pressure],
                                "restart_max": g.oom.restart_max,
                                "restart_backoff_us": g.oom.restart_backoff_us},
                        # only when set: a policy without it keeps its digest
                        **({"storage_max": g.storage_max} if g.storage_max is not None
                           else {}),
                    }
                    for g in t.groups.values()
                },
            }
            for t in tenants.values()
        },
        **_node_canon(node_costs or NodeCosts()),
    }
    blob = json.dumps(canon, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


def _in_file_order(problems: list[Problem]) -> list[Problem]:
    """Files in reading order, then by line (problems without a line last, in the order
    they were found): the order an operator fixes them in."""
    rank: dict[str, int] = {}
    for p in problems:
        rank.setdefault(p.file, len(rank))
    return sorted(problems, key=lambda p: (rank[p.file], p.line is None, p.line or 0))


def _build(docs: Sequence[Doc], problems: list[Problem],
           device_resolver: DeviceResolver | None, given: Sequence[str] = (),
           host: Host | None = None) -> Policy:
    ctx = Ctx(resolver=device_resolver or stat_block_device, problems=problems, host=host)
    tenants: dict[str, Tenant] = {}
    plans: dict[str, PricePlan] = {}
    tenant_home: dict[str, Doc] = {}
    plan_home: dict[str, Doc] = {}
    wanted_plans: list[tuple[Doc, str, str]] = []
    rules: list[tuple[Doc, KeyPath, str, MatchRule]] = []
    node_state = NodeState()
    for doc in docs:
        ctx.doc = doc
        for key, value in doc.data.items():
            if key not in ("plans", "tenants", *NODE_TOP_KEYS):
                report_unknown(ctx, (), key, value, ("plans", "tenants", *NODE_TOP_KEYS))
        parse_node_tables(ctx, doc, node_state)
        raw_plans = doc.data.get("plans", {})
        if not isinstance(raw_plans, dict):
            ctx.add(("plans",), raw_plans, "plans is a table: [plans.<name>]")
            raw_plans = {}
        for name, raw in raw_plans.items():
            if name in plan_home:
                ctx.add(("plans", name), None, f"plan {name} is already defined in "
                                               f"{plan_home[name].name}")
                continue
            plan_home[name] = doc
            plan = parse_plan(ctx, name, raw)
            if plan is not None:
                plans[name] = plan
        raw_tenants = doc.data.get("tenants", {})
        if not isinstance(raw_tenants, dict):
            ctx.add(("tenants",), raw_tenants, "tenants is a table: [tenants.<name>]")
            raw_tenants = {}
        for name, raw in raw_tenants.items():
            if name in tenant_home:
                ctx.add(("tenants", name), None,
                        f"tenant {name} is already defined in {tenant_home[name].name}; "
                        "a tenant lives in one file")
                continue
            tenant_home[name] = doc
            got = parse_tenant(ctx, name, raw, rules)
            if got is not None:
                tenant, plan_name = got
                tenants[name] = tenant
                if plan_name is not None:
                    wanted_plans.append((doc, name, plan_name))
    for doc, tenant_name, plan_name in wanted_plans:
        if plan_name not in plan_home:
            close = difflib.get_close_matches(plan_name, sorted(plan_home), n=1)
            hint = f"; did you mean {close[0]}?" if close else (
                "; no plans are defined" if not plan_home else
                f"; defined plans: {', '.join(sorted(plan_home))}")
            ctx.add(("tenants", tenant_name, "plan"), plan_name,
                    f"plan {show(plan_name)} does not exist{hint}", doc=doc)
    check_overlaps(ctx, rules)
    node_costs = finish_nodes(ctx, node_state)
    if not tenant_home and not any(p.severity == "error" for p in problems):
        _empty(problems, docs, given)
    problems[:] = _in_file_order(problems)
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity == "warning"]
    if errors:
        raise PolicyInvalid(problems)
    return Policy(tenants=tenants, plans=plans, sources=tuple(d.name for d in docs),
                  digest=_digest(tenants, plans, node_costs), warnings=tuple(warnings),
                  node_costs=node_costs)


def _empty(problems: list[Problem], docs: Sequence[Doc], given: Sequence[str]) -> None:
    """A policy without tenants is valid (it governs nothing) but rarely meant: a wrong
    path, an empty policy.d, a file whose tables are all commented out (issue 15)."""
    where = ", ".join(given) or ", ".join(d.name for d in docs)
    if not docs:
        problems.append(Problem(where, "", None, "no *.toml policy file found: the policy "
                                "is empty, so governor manages no tenant; check the path, "
                                "or add a file such as tenants.toml", severity="warning"))
        return
    problems.append(Problem(where, "", None, "no tenants defined: the policy is empty, so "
                            "governor manages no tenant; add a [tenants.<name>] table",
                            severity="warning"))


def load_policy(paths: Sequence[str | Path], *,
                device_resolver: DeviceResolver | None = None,
                host: Host | None = None) -> Policy:
    """Read and validate policy files and ``*.toml`` drop-in directories (name order).

    Raises :class:`PolicyInvalid` carrying every problem found; warnings of a valid policy
    are in :attr:`Policy.warnings`.  ``device_resolver`` maps an ``io.max`` device path to
    ``(major, minor)`` (default: :func:`stat_block_device`).  ``host``: the facts the
    generic controllers' keys are checked against (``cpuset.cpus`` names online CPUs);
    default :meth:`Host.probe`, read at the first such key.
    """
    problems: list[Problem] = []
    if isinstance(paths, str | Path):
        paths = [paths]
    if not paths:
        raise PolicyInvalid([Problem("", "", None, "no policy file or directory given")])
    docs = read_paths(paths, problems)
    return _build(docs, problems, device_resolver, [str(p) for p in paths], host)


def parse_policy(documents: Sequence[tuple[str, str]], *,
                 device_resolver: DeviceResolver | None = None,
                 host: Host | None = None) -> Policy:
    """Validate policy texts given as ``(name, toml_text)`` pairs, in that order (for
    tests, and for callers that hold the text already).  Same result as
    :func:`load_policy`."""
    problems: list[Problem] = []
    docs: list[Doc] = []
    for name, text in documents:
        if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
            problems.append(Problem(name, "", None, "text is larger than the 1 MiB limit"))
            continue
        doc = parse_text(name, text, problems)
        if doc is not None:
            docs.append(doc)
    return _build(docs, problems, device_resolver, host=host)


def check_policy(paths: Sequence[str | Path], *,
                 device_resolver: DeviceResolver | None = None,
                 host: Host | None = None,
                 ) -> tuple[Policy | None, list[Problem]]:
    """Like :func:`load_policy` but never raises: ``(policy or None, every problem)``."""
    try:
        policy = load_policy(paths, device_resolver=device_resolver, host=host)
    except PolicyInvalid as exc:
        return None, list(exc.problems)
    return policy, list(policy.warnings)
