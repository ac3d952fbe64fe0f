"""``governor recommend --format toml``: the suggestions as a policy drop-in.

The policy loader reads files and drop-in directories, and a tenant is defined in one
file only (docs/policy.md, "Files").  So the drop-in holds the whole table of each tenant
with a suggestion, copied from the policy as it is (plan, tenant limits, match rules,
other keys) with the suggested files set in its groups; the operator removes those
tenants' tables from their files (the header names them), adds the drop-in, and reviews
the writes with ``governor policy plan``.  Before it is printed the drop-in is checked
with the rest of the policy by the policy loader itself: its problems (a group's
``memory.max`` above its tenant's, say) are said in the header and returned.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Final

from governor.policy.context import Doc
from governor.policy.files import read_paths
from governor.policy.loader import parse_policy
from governor.policy.problems import PolicyInvalid, Problem
from governor.policy.units import format_size
from governor.recommend.errors import DropInError
from governor.recommend.rules import Recommendation

_BARE: Final = re.compile(r"\A[A-Za-z0-9_-]+\Z")
#: the spellings a policy may use for each suggested file, removed before it is set
_ALIASES: Final = {"memory.max": ("memory.max",), "memory.high": ("memory.high",),
                   "cpu.max": ("cpu.max", "cpus"), "cpu.weight": ("cpu.weight", "cpu.shares")}


def _key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k, ensure_ascii=False)


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")) \
            if not math.isfinite(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, datetime | date | time):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _is_table_array(v: object) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _needs_header(v: object, path: tuple[str, ...]) -> bool:
    """A table written under its own ``[header]``: a tenant, a group or a plan (the
    policy's own layout), an empty table, one holding arrays of tables; any other table
    of values is written as dotted keys in its parent (``memory.max = "256M"``)."""
    if not isinstance(v, dict):
        return False
    if (path[:1] == ("tenants",) and len(path) in (2, 4)) or (
            path[:1] == ("plans",) and len(path) == 2):
        return True
    return not v or any(_is_table_array(x) or _needs_header(x, (*path, k))
                        for k, x in v.items())


def _dotted(prefix: str, v: Mapping[str, Any], out: list[str]) -> None:
    for k, x in v.items():
        name = f"{prefix}.{_key(k)}"
        if isinstance(x, dict) and x:
            _dotted(name, x, out)
        else:
            out.append(f"{name} = {_value(x)}")


def dump_toml(data: Mapping[str, Any], path: tuple[str, ...] = (), *,
              array: bool = False) -> str:
    """TOML text that ``tomllib`` reads back as ``data`` (at ``path``; ``array``: as an
    element of an array of tables)."""
    lines: list[str] = []
    later: list[str] = []
    for k, v in data.items():
        if _needs_header(v, (*path, k)):
            later.append(dump_toml(v, (*path, k)))
        elif _is_table_array(v):
            later.extend(dump_toml(item, (*path, k), array=True) for item in v)
        elif isinstance(v, dict):
            _dotted(_key(k), v, lines)
        else:
            lines.append(f"{_key(k)} = {_value(v)}")
    header = ".".join(_key(p) for p in path)
    head = ""
    if array:
        head = f"[[{header}]]\n"
    elif header and (lines or not later):
        head = f"[{header}]\n"
    text = head + "".join(line + "\n" for line in lines)
    return "\n".join(x for x in (text, *later) if x)


def _set(table: dict[str, Any], file: str, value: object) -> None:
    """Set ``file`` (e.g. memory.max) in a group's raw table in its place, whatever the
    spelling the policy used (dotted, quoted, or an alias such as ``cpus``, removed)."""
    head, _, leaf = file.partition(".")
    table.pop(file, None)                       # a quoted "memory.max" key
    for alias in _ALIASES[file]:
        if alias == file:
            continue
        table.pop(alias, None)
        a_head, _, a_leaf = alias.partition(".")
        sub = table.get(a_head)
        if a_leaf and isinstance(sub, dict):
            sub.pop(a_leaf, None)
            if not sub and a_head != head:
                table.pop(a_head)
    sub = table.get(head)
    if isinstance(sub, dict):
        sub[leaf] = value
    else:
        table[head] = {leaf: value}


def _policy_value(file: str, kernel: str) -> object:
    if file.startswith("memory."):
        return format_size(int(kernel))
    if file == "cpu.weight":
        return int(kernel)
    return kernel


def build_dropin(paths: Sequence[str | Path], recs: Sequence[Recommendation], *,
                 header: Sequence[str] = ()) -> tuple[str, list[Problem]]:
    """The drop-in text for the suggestions of ``recs`` whose tenant the policy at
    ``paths`` defines, and the policy loader's problems with it (empty: it loads)."""
    problems: list[Problem] = []
    docs = read_paths(paths, problems)
    if problems:
        raise PolicyInvalid(problems)
    home: dict[str, Doc] = {}
    raw: dict[str, dict[str, Any]] = {}
    for doc in docs:
        tables = doc.data.get("tenants")
        for name, table in (tables.items() if isinstance(tables, dict) else ()):
            if isinstance(table, dict) and name not in home:
                home[name], raw[name] = doc, table
    changed: dict[str, dict[str, Any]] = {}
    said: list[str] = []
    for r in recs:
        if not r.suggest or r.tenant not in raw:
            continue
        tenant = changed.setdefault(r.tenant, copy.deepcopy(raw[r.tenant]))
        groups = tenant.setdefault("groups", {})
        if not isinstance(groups.get(r.group), dict):
            said.append(f"# {r.path}: not a group of the policy; added with the suggestions")
            groups[r.group] = {}
        for file, kernel in r.suggest.items():
            _set(groups[r.group], file, _policy_value(file, kernel))
        flags = ", ".join(r.flags) or "sized from its history"
        said.append(f"# {r.path} ({flags}): " + ", ".join(
            f"{f} {r.current.get(f, 'unset')} -> {r.suggest[f]}" for f in r.suggest))
    if not changed:
        raise DropInError("no suggestion for a tenant the policy defines: nothing to write "
                          f"(policy: {', '.join(map(str, paths))})")
    body = dump_toml({"tenants": changed})
    rest = [(d.name, dump_toml(_without(d.data, changed))) for d in docs]
    try:
        problems = list(parse_policy([*rest, ("recommend.toml", body)]).warnings)
    except PolicyInvalid as exc:
        problems = list(exc.problems)
    sources = sorted({home[t].name for t in changed})
    top = [*header,
           f"# Replaces the tables of tenant{'s' if len(changed) > 1 else ''} "
           f"{', '.join(sorted(changed))} (a tenant is defined in one file): remove "
           f"{'them' if len(changed) > 1 else 'it'} from {', '.join(sources)}, add this "
           "file to the policy directory,",
           "# then review the writes with: governor policy plan --policy <that directory>",
           *said,
           *(f"# {'WARNING' if p.severity == 'warning' else 'PROBLEM'}: "
             f"{str(p).removeprefix('warning: ')}" for p in problems)]
    return "\n".join(top) + "\n\n" + body, [p for p in problems if p.severity == "error"]


def _without(data: Mapping[str, Any], tenants: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(data)
    if isinstance(out.get("tenants"), dict):
        out["tenants"] = {k: v for k, v in out["tenants"].items() if k not in tenants}
    return out
