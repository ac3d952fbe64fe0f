"""Match rules compiled for speed, evaluated in policy order against a :class:`Proc`.

Order (first match wins): tenants in policy order (file order, drop-ins in name order),
then each tenant's groups as written, then each group's ``[[match]]`` rules as written.
Within a rule every field that is set must match; fields are tested cheapest first (ids
from ``status``, then ``comm``, ``exe``, ``cgroup``, ``cmdline``, container), so most
non-matching rules cost one small read.

* ``user``/``uid``, ``group``/``gid`` compare the process's **real** uid/gid (the first
  value of ``Uid:``/``Gid:`` in ``/proc/PID/status``), as libcgroup's cgrulesengd does: a
  setuid program run by alice stays alice's.  Names are resolved once, when the rules are
  compiled (on each policy load); a name that does not resolve makes its rule match nothing
  and is reported by :attr:`RuleSet.unresolved`.
* ``comm`` is the kernel's name (``/proc/PID/comm``, at most 15 bytes).  It is the basename
  of the path given to execve, so a program started through ``/proc/self/exe`` (runc,
  docker and others re-exec themselves that way) is named ``exe``; match such programs with
  ``exe``, the resolved executable path, which is always the real file.
* ``exe`` is the target of ``/proc/PID/exe`` (a file replaced since start reads as
  ``PATH (deleted)``, which a glob ending in ``*`` still matches).
* ``cgroup`` globs the current cgroup v2 path; ``*`` crosses ``/`` (fnmatch).
* ``cmdline`` is an RE2 pattern searched in the first 4096 bytes of the command line
  (:mod:`governor.policy.patterns`: linear time whatever a tenant puts in its arguments).
"""

from __future__ import annotations

import fnmatch
import grp
import pwd
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from governor.placement.procfs import Proc
from governor.policy.model import ContainerMatch, MatchRule, Policy
from governor.policy.patterns import CmdlinePattern, compile_cmdline


def glob_re(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


def _user_uid(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def _group_gid(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


class ContainerView:
    """What the container field needs: the host's pid namespace and a way to find the
    comm of a namespace's init (the process whose last NSpid is 1)."""

    def __init__(self, host_ns: int, init_comm: Callable[[Proc, int], str | None]) -> None:
        self.host_ns = host_ns
        self.init_comm = init_comm


@dataclass(slots=True)
class CompiledRule:
    rule: MatchRule
    target: str          # "tenant/group"
    label: str           # "tenant/group#N" (N: rule index from 1, for logs)
    uid: int | None = None
    gid: int | None = None
    unresolved: str | None = None
    comm: re.Pattern[str] | None = None
    exe: re.Pattern[str] | None = None
    cgroup: re.Pattern[str] | None = None
    cmdline: CmdlinePattern | None = None
    container: bool | ContainerMatch | None = None
    init: re.Pattern[str] | None = None

    @property
    def on_exec(self) -> bool:
        return self.rule.on_exec

    def matches(self, p: Proc, cv: ContainerView) -> bool:
        if self.unresolved is not None:
            return False
        if self.uid is not None or self.gid is not None:
            st = p.status()
            if self.uid is not None and st.uid != self.uid:
                return False
            if self.gid is not None and st.gid != self.gid:
                return False
        if self.comm is not None and not self.comm.match(p.comm()):
            return False
        if self.exe is not None:
            exe = p.exe()
            if exe is None or not self.exe.match(exe):
                return False
        if self.cgroup is not None and not self.cgroup.match(p.cached_cgroup()):
            return False
        if self.cmdline is not None and not self.cmdline.search(p.cmdline()):
            return False
        c = self.container
        if c is not None:
            ns = p.pidns()
            if c is True or c is False:
                return (ns != cv.host_ns) is c
            if ns == cv.host_ns or (c.pidns is not None and ns != c.pidns):
                return False
            if self.init is not None:
                name = cv.init_comm(p, ns)
                if name is None or not self.init.match(name):
                    return False
        return True


def compile_rule(rule: MatchRule, target: str, label: str, *,
                 user_uid: Callable[[str], int | None] = _user_uid,
                 group_gid: Callable[[str], int | None] = _group_gid) -> CompiledRule:
    c = CompiledRule(rule=rule, target=target, label=label)
    uid = rule.uid
    if rule.user is not None:
        by_name = user_uid(rule.user)
        if by_name is None:
            c.unresolved = f"user {rule.user!r} does not exist"
        elif uid is not None and uid != by_name:
            c.unresolved = f"user {rule.user!r} is uid {by_name}, the rule says uid {uid}"
        uid = by_name if by_name is not None else uid
    gid = rule.gid
    if rule.group is not None:
        by_name = group_gid(rule.group)
        if by_name is None:
            c.unresolved = f"group {rule.group!r} does not exist"
        elif gid is not None and gid != by_name:
            c.unresolved = f"group {rule.group!r} is gid {by_name}, the rule says gid {gid}"
        gid = by_name if by_name is not None else gid
    c.uid, c.gid = uid, gid
    if rule.comm is not None:
        c.comm = glob_re(rule.comm)
    if rule.exe is not None:
        c.exe = glob_re(rule.exe)
    if rule.cgroup is not None:
        c.cgroup = glob_re(rule.cgroup)
    if rule.cmdline is not None:
        c.cmdline = compile_cmdline(rule.cmdline)
    c.container = rule.container
    if isinstance(rule.container, ContainerMatch) and rule.container.init is not None:
        c.init = glob_re(rule.container.init)
    return c


@dataclass
class RuleSet:
    """Every rule of a policy in match order."""

    rules: list[CompiledRule] = field(default_factory=list)

    @classmethod
    def from_policy(cls, policy: Policy | None, *,
                    user_uid: Callable[[str], int | None] = _user_uid,
                    group_gid: Callable[[str], int | None] = _group_gid) -> RuleSet:
        out = cls()
        if policy is None:
            return out
        for group in policy.groups():  # tenants, then groups, in policy order
            for i, rule in enumerate(group.match, 1):
                out.rules.append(compile_rule(rule, group.path, f"{group.path}#{i}",
                                              user_uid=user_uid, group_gid=group_gid))
        return out

    @property
    def unresolved(self) -> list[tuple[str, str]]:
        """``(rule label, why)`` of rules that can never match (unknown user or group)."""
        return [(r.label, r.unresolved) for r in self.rules if r.unresolved is not None]

    def first(self, p: Proc, cv: ContainerView, *, on_exec_only: bool = False,
              cgroup_only: bool = False) -> CompiledRule | None:
        """The first rule ``p`` matches; ``on_exec_only``: among ``on_exec`` rules only;
        ``cgroup_only``: among rules that name a ``cgroup`` (for excluded cgroups)."""
        for r in self.rules:
            if on_exec_only and not r.rule.on_exec:
                continue
            if cgroup_only and r.cgroup is None:
                continue
            if r.matches(p, cv):
                return r
        return None

    def __len__(self) -> int:
        return len(self.rules)


class Exclusions:
    """Cgroup globs whose processes are left alone unless a rule's ``cgroup`` names them.

    A glob that starts with ``!`` is an exception: as in .gitignore, the last glob that
    matches a cgroup decides, so ``"/system.slice/*"`` then ``"!*/docker-*.scope*"``
    leaves system services alone but keeps containers' scopes candidates."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        self._rules = [(p.startswith("!"), re.compile(fnmatch.translate(p.removeprefix("!"))))
                       for p in self.patterns]
        self._any = (re.compile("|".join(f"(?:{fnmatch.translate(p)})"
                                         for p in self.patterns))
                     if self.patterns and not any(p.startswith("!") for p in self.patterns)
                     else None)

    def __call__(self, cgroup_path: str) -> bool:
        if self._any is not None:  # no exceptions: one regular expression decides
            return self._any.match(cgroup_path) is not None
        excluded = False
        for negated, rx in self._rules:
            if rx.match(cgroup_path) is not None:
                excluded = not negated
        return excluded
