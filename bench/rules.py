"""Policy match rules under load (issue 15 items 5 and 6), on the host.

Run: ``.venv/bin/python bench/rules.py [--rules 1000 8000] [--cmdline-kib 200]``.

* overlap check: ``parse_policy`` of a generated policy with N ``[[match]]`` rules (one
  group per 8 rules; each rule a distinct user + comm, every 50th one a cmdline regex and
  every 100th a duplicate of an earlier rule, so the warnings are exercised), wall seconds
  (best of 3 below 2,000 rules, else one run) and the number of overlap warnings;
* cmdline matching: one compiled rule of each hostile shape (``(a+)+$``, ``(a|a)*b``,
  ``(.*a){12}``, ``(x+x+)+y``, ``.*a.*y``) and a plain one, searched against a command line of
  ``--cmdline-kib`` KiB of ``a`` (the worst case for those shapes), through
  ``CompiledRule.matches`` on a fake ``/proc`` (the length cap of procfs included): ms per
  match, worst of 5.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from governor.placement.procfs import Proc
from governor.placement.rules import ContainerView, compile_rule
from governor.policy import parse_policy
from governor.policy.model import MatchRule


def generate(n: int) -> str:
    out = ["[tenants.t]\n"]
    for i in range(n):
        if i % 8 == 0:
            out.append(f"[tenants.t.groups.g{i // 8}]\n")
        if i % 100 == 99:
            j = i - 37
            out.append(f'[[tenants.t.groups.g{i // 8}.match]]\nuser = "u{j}"\n'
                       f'comm = "c{j}"\n')
        elif i % 50 == 0:
            out.append(f'[[tenants.t.groups.g{i // 8}.match]]\ncmdline = "--job={i}( |$)"\n')
        else:
            out.append(f'[[tenants.t.groups.g{i // 8}.match]]\nuser = "u{i}"\n'
                       f'comm = "c{i}"\n')
    return "".join(out)


def bench_overlap(n: int) -> None:
    text = generate(n)
    runs = 3 if n < 2000 else 1
    best = float("inf")
    warnings = 0
    for _ in range(runs):
        t0 = time.perf_counter()
        pol = parse_policy([("bench.toml", text)])
        best = min(best, time.perf_counter() - t0)
        warnings = sum("overlaps" in w.message or "same rule" in w.message
                       for w in pol.warnings)
    print(f"overlap check: {n:>6} rules  parse_policy {best:8.3f} s  "
          f"overlap warnings {warnings}")


def bench_cmdline(kib: int) -> None:
    patterns = [r"(a+)+$", r"(a|a)*b", r"(.*a){12}", r"(x+x+)+y", r".*a.*y", r"--job=42( |$)"]
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "1").mkdir()
        (Path(root) / "1" / "cmdline").write_bytes(b"prog\0" + b"a" * (kib * 1024) + b"!\0")
        cv = ContainerView(0, lambda _p, _ns: None)
        for pat in patterns:
            try:
                rule = compile_rule(MatchRule(cmdline=pat), "t/g", "t/g#1")
            except Exception as e:  # the old engine has no way to refuse; report it
                print(f"cmdline {pat!r:>18}: not compiled: {e}")
                continue
            worst = 0.0
            for _ in range(5):
                p = Proc(root, 1)
                t0 = time.perf_counter()
                rule.matches(p, cv)
                worst = max(worst, time.perf_counter() - t0)
                if worst > 10:
                    break
            print(f"cmdline {pat!r:>18} on {kib} KiB: {worst * 1000:10.3f} ms (worst of 5)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rules", type=int, nargs="+", default=[1000, 8000])
    ap.add_argument("--cmdline-kib", type=int, default=200)
    ap.add_argument("--skip-cmdline", action="store_true")
    args = ap.parse_args()
    for n in args.rules:
        bench_overlap(n)
    if not args.skip_cmdline:
        bench_cmdline(args.cmdline_kib)
    return 0


if __name__ == "__main__":
    sys.exit(main())
