# needs: kernel
"""Plan and apply a generated policy of N groups, then a reconcile pass with nothing to do.

Run inside the sandbox: ``bench/run enforce`` (default N = 1000: 50 tenants x 20 groups,
each group with memory, cpu, io and pids limits).  Prints, for each phase, the wall time,
the writes planned and issued, and for the no-op reconcile the writes it issued (must be 0).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.tree import remove
from governor.enforce import apply_plan, desired_state, make_plan
from governor.policy import parse_policy


def generate(tenants: int, groups: int) -> str:
    out = []
    for t in range(tenants):
        out.append(f'[tenants.t{t}]\nmemory.max = "{groups * 64}M"\ncpu.weight = {100 + t}\n')
        for g in range(groups):
            out.append(
                f'[tenants.t{t}.groups.g{g}]\nmemory.max = "{32 + g}M"\n'
                f'memory.high = "{28 + g}M"\nmemory.low = "4M"\ncpu.weight = {50 + g}\n'
                f'cpu.max = "0.{g % 9 + 1}"\nio.weight = {100 + g}\npids.max = {64 + g}\n')
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tenants", type=int, default=50)
    ap.add_argument("--groups", type=int, default=20, help="groups per tenant")
    args = ap.parse_args()
    if os.environ.get("GOVERNOR_SANDBOX") != "1":
        print("enforce: run inside the sandbox: bench/run enforce", file=sys.stderr)
        return 2
    subtree = f"bench-{uuid.uuid4().hex[:8]}"
    fs = CgroupFS(Path("/sys/fs/cgroup"))
    t0 = time.perf_counter()
    policy = parse_policy([("bench.toml", generate(args.tenants, args.groups))])
    t_validate = time.perf_counter() - t0
    desired = desired_state(policy)
    n = len(policy.groups())
    print(f"policy: {args.tenants} tenants, {n} groups; validated in {t_validate * 1e3:.0f} ms")
    print(f"{'phase':<22} {'wall s':>8} {'writes planned':>15} {'writes issued':>14} "
          f"{'failed':>7}")
    try:
        for phase in ("plan+apply (fresh)", "reconcile (no change)"):
            t0 = time.perf_counter()
            plan = make_plan(fs, subtree, desired)
            t_plan = time.perf_counter() - t0
            outcomes = apply_plan(fs, plan)
            wall = time.perf_counter() - t0
            failed = sum(not o.ok for o in outcomes)
            print(f"{phase:<22} {wall:>8.2f} {len(plan.writes):>15} {len(outcomes):>14} "
                  f"{failed:>7}   (plan {t_plan:.2f} s)", flush=True)
        # drift in 1% of the groups: only those are rewritten
        drifted = policy.groups()[:: 100]
        for g in drifted:
            fs.write(f"{subtree}/{g.path}", "memory.max", "max")
        t0 = time.perf_counter()
        plan = make_plan(fs, subtree, desired)
        outcomes = apply_plan(fs, plan)
        wall = time.perf_counter() - t0
        print(f"{'reconcile (1% drift)':<22} {wall:>8.2f} {len(plan.writes):>15} "
              f"{len(outcomes):>14} {sum(not o.ok for o in outcomes):>7}   "
              f"({len(drifted)} groups drifted)")
    finally:
        remove(fs, subtree)
    return 0


if __name__ == "__main__":
    sys.exit(main())
