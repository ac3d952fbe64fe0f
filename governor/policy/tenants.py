"""Validating tenants and their groups: names, limits, storage and the limits a tenant
sets for its groups (part of :mod:`governor.policy.loader`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Final

from governor.cgroupfs.names import check_name
from governor.errors import InvalidName
from governor.policy import units
from governor.policy.context import (
    GROUP_KEYS,
    TENANT_KEYS,
    BadValue,
    Ctx,
    Doc,
    KeyPath,
    check_size,
    check_str,
    flatten_keys,
    generic_key_names,
    report_unknown,
)
from governor.policy.generic import is_generic, parse_generic
from governor.policy.limits import parse_limits, parse_oom
from governor.policy.matching import parse_match_rule
from governor.policy.model import (
    Group,
    MatchRule,
    Tenant,
)
from governor.policy.units import MAX, Size, show


def valid_name(ctx: Ctx, path: KeyPath, name: str, what: str) -> bool:
    try:
        check_name(name, what=what)
    except InvalidName as exc:
        ctx.add(path, name, f"{show(name)} is not a safe {what} name: {exc.reason}")
        return False
    return True


def _group(ctx: Ctx, tenant: str, name: str, raw: object,
           rules: list[tuple[Doc, KeyPath, str, MatchRule]]) -> Group | None:
    base: KeyPath = ("tenants", tenant, "groups", name)
    ok = valid_name(ctx, base, name, "group")
    if not isinstance(raw, dict):
        ctx.add(base, raw, "a group is a table: [tenants.<tenant>.groups.<group>]")
        return None
    flat = flatten_keys({k: v for k, v in raw.items() if k != "match"}, GROUP_KEYS)
    for key, value in flat.items():
        if key not in GROUP_KEYS and not is_generic(key):
            report_unknown(ctx, base, key, value, GROUP_KEYS | generic_key_names("group"))
    limits = parse_limits(ctx, base, flat)
    extra = parse_generic(ctx, base, flat, "group")
    if extra:
        limits = replace(limits, extra=extra)
    oom = parse_oom(ctx, base, flat)
    storage_max = _storage_max(ctx, base, flat)
    match: list[MatchRule] = []
    if "match" in raw:
        raw_rules = raw["match"]
        if not isinstance(raw_rules, list):
            ctx.add((*base, "match"), raw["match"],
                    "match is an array of tables: [[tenants.<t>.groups.<g>.match]]")
        else:
            for i, item in enumerate(raw_rules):
                rule = parse_match_rule(ctx, (*base, "match", i), item)
                if rule is not None:
                    match.append(rule)
                    assert ctx.doc is not None
                    rules.append((ctx.doc, (*base, "match", i), f"{tenant}/{name}", rule))
    if not ok:
        return None
    assert ctx.doc is not None
    return Group(name=name, tenant=tenant, limits=limits, match=tuple(match), oom=oom,
                 storage_max=storage_max, source=ctx.doc.name)


#: the smallest storage.max: a container's upper layer needs a few blocks before the
#: command's first write (overlayfs's work directory, copied-up parents)
STORAGE_MIN: Final = 1 << 20


def _storage_max(ctx: Ctx, base: KeyPath, flat: Mapping[str, object]) -> int | None:
    """``storage.max``: the most bytes the group's containers may write to their writable
    layers together (a project quota, governor.image.writable); None: no limit."""
    if "storage.max" not in flat:
        return None
    raw = flat["storage.max"]
    try:
        size = check_size(raw)
    except BadValue as exc:
        ctx.add((*base, "storage.max"), raw, str(exc))
        return None
    if size is MAX:
        return None
    if not isinstance(size, int) or size < STORAGE_MIN:
        ctx.add((*base, "storage.max"), raw, f"{show(raw)} is below the smallest "
                                              f"storage.max, 1M; use \"max\" for no limit")
        return None
    return size


def _fmt(size: Size) -> str:
    return units.format_size(size)


def _tenant_vs_groups(ctx: Ctx, tenant: Tenant, flat: Mapping[str, object]) -> None:
    base: KeyPath = ("tenants", tenant.name)
    for key, attr in (("memory.min", "memory_min"), ("memory.low", "memory_low")):
        cap = getattr(tenant.limits, attr)
        if not isinstance(cap, int):
            continue
        parts = [(g.name, getattr(g.limits, attr)) for g in tenant.groups.values()
                 if getattr(g.limits, attr) is not None]
        if any(v is MAX for _, v in parts):
            total: Size = MAX
        else:
            total = sum(int(v) for _, v in parts)
        if total is MAX or total > cap:
            detail = " + ".join(f"{n} {_fmt(v)}" for n, v in parts)
            ctx.add((*base, key), flat.get(key),
                    f"the groups' {key} add up to {_fmt(total)} ({detail}), above the "
                    f"tenant's {key} of {_fmt(cap)}")
    cap_max = tenant.limits.memory_max
    if isinstance(cap_max, int):
        for g in tenant.groups.values():
            gmax = g.limits.memory_max
            if isinstance(gmax, int) and gmax > cap_max:
                ctx.add((*base, "groups", g.name, "memory.max"), gmax,
                        f"memory.max ({_fmt(gmax)}) is above the tenant's memory.max "
                        f"({_fmt(cap_max)}); the tenant's limit applies first", "warning")


def parse_tenant(
    ctx: Ctx, name: str, raw: object, rules: list[tuple[Doc, KeyPath, str, MatchRule]]
) -> tuple[Tenant, str | None] | None:
    base: KeyPath = ("tenants", name)
    ok = valid_name(ctx, base, name, "tenant")
    if not isinstance(raw, dict):
        ctx.add(base, raw, "a tenant is a table: [tenants.<name>]")
        return None
    # storage.max flattened too, to be refused by its name (it is a group's key)
    flat = flatten_keys({k: v for k, v in raw.items() if k != "groups"},
                        TENANT_KEYS | {"storage.max"})
    for key, value in flat.items():
        if key == "storage.max":
            ctx.add((*base, key), value, "storage.max is set per group (the writable layers "
                                         "of the group's containers from images): move it "
                                         "to [tenants.<tenant>.groups.<group>]")
        elif key not in TENANT_KEYS and not is_generic(key):
            report_unknown(ctx, base, key, value, TENANT_KEYS | generic_key_names("tenant"))
    plan: str | None = None
    if "plan" in flat:
        try:
            plan = check_str(flat["plan"], "plan names a [plans.<name>] table")
        except BadValue as exc:
            ctx.add((*base, "plan"), flat["plan"], str(exc))
    limits = parse_limits(ctx, base, flat)
    extra = parse_generic(ctx, base, flat, "tenant")
    if extra:
        limits = replace(limits, extra=extra)
    groups: dict[str, Group] = {}
    raw_groups = raw.get("groups", {})
    if not isinstance(raw_groups, dict):
        ctx.add((*base, "groups"), raw_groups, "groups is a table of groups")
    else:
        for gname, graw in raw_groups.items():
            group = _group(ctx, name, gname, graw, rules)
            if group is not None:
                groups[gname] = group
    if not ok:
        return None
    assert ctx.doc is not None
    tenant = Tenant(name=name, plan=plan, limits=limits, groups=groups, source=ctx.doc.name)
    _tenant_vs_groups(ctx, tenant, flat)
    return tenant, plan
