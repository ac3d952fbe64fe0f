"""The policy keys of the registered generic controllers (governor/controllers/): found in a
tenant's or group's table, checked by their controller against the :class:`Host` and
turned into ``(interface file, kernel value)`` writes, ``Limits.extra`` (part of
:mod:`governor.policy.loader`).

Each controller module declares its keys (:class:`~governor.controllers.base.PolicyKey`);
a key family such as ``hugetlb.<size>.max`` names each free part in angle brackets, and a
TOML table on the way to one (``hugetlb = { 2MB = { max = "1G" } }``) is flattened into
the dotted key like the fixed keys are.
"""

from __future__ import annotations

from collections.abc import Mapping

from governor.controllers import registry
from governor.controllers.base import BadKeyValue, Controller, PolicyKey, Scope
from governor.policy.context import Ctx, KeyPath


def is_generic(key: str) -> bool:
    """Whether ``key`` (flattened) is a registered generic controller's key."""
    return registry.policy_key(key) is not None


def parse_generic(ctx: Ctx, base: KeyPath, flat: Mapping[str, object],
                  scope: Scope) -> tuple[tuple[str, str], ...]:
    """The writes of the generic keys in ``flat`` (a flattened tenant or group table), in
    registry order (within a controller: its keys' order, then the files').  Problems
    are reported against the key and its value: a value its controller refuses
    (:class:`BadKeyValue`), a key in the wrong table, a controller the host does not
    offer, and what the controller's ``check`` finds among the table's writes."""
    #: controller -> (rank, file, value, key) of its writes
    found: dict[str, list[tuple[int, str, str, str]]] = {}
    for key, value in flat.items():
        hit = registry.policy_key(key)
        if hit is None:
            continue
        c, decl = hit
        path = (*base, key)
        if scope not in decl.scopes:
            other = " or ".join(sorted(decl.scopes))
            ctx.add(path, value, f"{key} is not a {scope} key: set it in a {other} table")
            continue
        host = ctx.facts()
        if host.controllers is not None and c.name not in host.controllers:
            offered = " ".join(sorted(host.controllers)) or "none"
            ctx.add(path, value, f"{key} needs the {c.name} controller, which this host's "
                                 f"cgroup v2 hierarchy does not offer (cgroup.controllers: "
                                 f"{offered}); remove the key, or enable {c.name} in the "
                                 "kernel (on a hybrid host cgroup v1 may hold it)")
            continue
        try:
            writes = c.parse(key, value, host)
        except BadKeyValue as e:
            ctx.add(path, value, str(e))
            continue
        rank = _rank(c, decl)
        mine = found.setdefault(c.name, [])
        for file, text in writes:
            earlier = next((k for _, f, _, k in mine if f == file), None)
            if earlier is not None:
                ctx.add(path, value, f"{key} writes {file}, which {earlier} writes already; "
                                     "keep one")
                continue
            mine.append((rank, file, text, key))
    out: list[tuple[str, str]] = []
    for c in registry.generic():
        mine = sorted(found.get(c.name, []))
        if not mine:
            continue
        key_of = {f: k for _, f, _, k in mine}
        table = {f: v for _, f, v, _ in mine}
        for file, message in c.check(table, ctx.facts()):
            key = key_of.get(file, file)
            ctx.add((*base, key), flat.get(key), message)
        out.extend((f, v) for _, f, v, _ in mine)
    return tuple(out)


def _rank(c: Controller, decl: PolicyKey) -> int:
    return next(i for i, k in enumerate(c.keys) if k is decl)
