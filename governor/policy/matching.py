"""Validating placement's match rules (``[[...match]]``) and finding rules that
overlap (part of :mod:`governor.policy.loader`)."""

from __future__ import annotations

import itertools

from governor.policy.context import (
    MATCH_FIELDS,
    BadValue,
    Ctx,
    Doc,
    KeyPath,
    check_int,
    check_str,
    render_key,
    report_unknown,
)
from governor.policy.model import (
    ContainerMatch,
    MatchRule,
)
from governor.policy.patterns import PatternError, compile_cmdline
from governor.policy.units import show


def _glob(value: object, what: str) -> str:
    return check_str(value, f"{what} is a glob pattern")


def parse_match_rule(ctx: Ctx, path: KeyPath, raw: object) -> MatchRule | None:
    if not isinstance(raw, dict):
        ctx.add(path, raw, "a match rule is a table, e.g. [[...match]] user = \"www-data\"")
        return None
    values: dict[str, object] = {}
    ok = True
    for key, value in raw.items():
        kpath = (*path, key)
        if key not in MATCH_FIELDS:
            report_unknown(ctx, path, key, value, MATCH_FIELDS)
            ok = False
            continue
        try:
            if key in ("uid", "gid"):
                values[key] = check_int(value, 0, 2**32 - 2, key)
            elif key in ("user", "group"):
                values[key] = check_str(value, f"{key} is a name")
            elif key in ("exe", "comm", "cgroup"):
                values[key] = _glob(value, key)
            elif key == "cmdline":
                pattern = check_str(value, "cmdline is a regular expression")
                try:
                    compile_cmdline(pattern)
                except PatternError as exc:
                    raise BadValue(f"{show(value)} is not a valid regular expression "
                               f"(RE2 syntax): {exc}") from None
                values[key] = pattern
            elif key == "on_exec":
                if not isinstance(value, bool):
                    raise BadValue(f"{show(value)} is not true or false")
                values[key] = value
            else:
                values[key] = _container(value)
        except BadValue as exc:
            ctx.add(kpath, value, str(exc))
            ok = False
    if not ok:
        return None
    if not set(values) - {"on_exec"}:
        ctx.add(path, raw, "an empty match rule would match every process; give a field")
        return None
    return MatchRule(**values)  # type: ignore[arg-type]


def _container(value: object) -> bool | ContainerMatch:
    if isinstance(value, bool):
        return value
    if not isinstance(value, dict) or not value:
        raise BadValue(f"{show(value)} is not true/false, {{pidns = N}} or {{init = \"name\"}}")
    extra = set(value) - {"pidns", "init"}
    if extra:
        raise BadValue(f"unknown container field {show(sorted(extra)[0])}; use pidns or init")
    pidns = value.get("pidns")
    init = value.get("init")
    if pidns is not None:
        pidns = check_int(pidns, 0, 2**64 - 1, "pidns (a namespace inode number)")
    if init is not None:
        init = check_str(init, "init is a process name")
    return ContainerMatch(pidns=pidns, init=init)


def check_overlaps(ctx: Ctx, rules: list[tuple[Doc, KeyPath, str, MatchRule]]) -> None:
    """Warn when every process one rule matches is also matched by an earlier rule (or the
    reverse): the placement would depend on rule order.

    Rule A and a later rule B overlap when the fields A sets are a subset of B's, or the
    reverse (as ``(name, value)`` pairs); B is reported once, against the earliest such A.
    Near-linear (issue 15: the pairwise check took 94 s at 8,000 rules): a rule sets at
    most ``len(MATCH_FIELDS)`` fields, so each rule's field subsets are enumerated (at
    most 2**10, typically 2 to 8) and two maps answer both directions by lookup:
    ``exact`` (field set -> first rule with exactly that set: the A that are subsets of B)
    and ``within`` (field set -> first rule whose set contains it: the A that contain B).
    """
    exact: dict[frozenset[tuple[str, object]], int] = {}
    within: dict[frozenset[tuple[str, object]], int] = {}
    for j, (doc_b, path_b, where_b, rule_b) in enumerate(rules):
        fields_b = rule_b.fields()
        items = list(fields_b.items())
        items_b = frozenset(items)
        subsets = [frozenset(c) for r in range(1, len(items) + 1)
                   for c in itertools.combinations(items, r)]
        found = within.get(items_b)
        for s in subsets:
            i = exact.get(s)
            if i is not None and (found is None or i < found):
                found = i
        if found is not None:
            _, path_a, where_a, rule_a = rules[found]
            same = ("the same rule as" if frozenset(rule_a.fields().items()) == items_b
                    else "overlaps")
            ctx.add(path_b, fields_b,
                    f"{same} {render_key(path_a[-2:])} of {where_a}: a process could "
                    f"match both ({where_b})", "warning", doc=doc_b)
        exact.setdefault(items_b, j)
        for s in subsets:
            within.setdefault(s, j)
