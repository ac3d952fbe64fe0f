"""How the sampler's passes share the slow tier, on the host (issue #16).

Run: ``.venv/bin/python bench/slow_tier.py [--groups 1000] [--passes 120]`` (from the
repository, or with ``PYTHONPATH`` at a worktree to time another commit).

A fake cgroup tree (``tests/unit/cgroupfs_fake``: tmpfs files holding real 6.1 kernel
output) of N groups in tenants of 100, and one :class:`~governor.metering.sampler.Sampler`
with the daemon's ``slow_every`` (6).  The CPU time of each ``Sampler.sample()`` after the
first two is printed: the median of the passes that read every group's slow tier
(``SamplePass.slow``: before governor/metering/tiers.py, every 6th pass; since, only the
first, which is not timed) and of the others, then the median, p90, p98 and max of all.
What matters is the p90: with the slow tier read all at once, one pass in six carries it;
spread over the passes, none does.  The kernel's figure is ``bench/run daemon_cost
--groups 10000`` (its late passes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.reader import raise_nofile_limit
from governor.metering.sampler import Sampler
from tests.unit.cgroupfs_fake import create_groups


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--passes", type=int, default=120)
    args = ap.parse_args()
    raise_nofile_limit()  # as the daemon: ~12 descriptors per group
    tmp = Path(tempfile.mkdtemp(prefix="governor-tier-"))
    create_groups(tmp / "cg" / "gov", args.groups)
    fs = CgroupFS(tmp / "cg", verify=False)
    sampler = Sampler(fs, "gov", "bench")
    timed: list[tuple[bool, float]] = []
    for i in range(args.passes + 2):
        c = time.process_time()
        p = sampler.sample()
        took = time.process_time() - c
        if i >= 2:
            timed.append((p.slow, took * 1e3))
    n = len(p.samples)
    print(f"Sampler.sample() on the host: {n} groups ({args.groups} + tenants), "
          f"slow_every {sampler.slow_every}, {args.passes} passes timed, CPU ms")
    for flag, what in ((True, "every group's slow tier"), (False, "the others")):
        got = [t for s, t in timed if s is flag]
        if got:
            print(f"  {what:<24} {len(got):4d} passes, median {statistics.median(got):7.1f}")
    every = sorted(t for _, t in timed)
    k = len(every)
    print(f"  all passes: median {statistics.median(every):.1f}  p90 {every[int(k * 0.9)]:.1f}"
          f"  p98 {every[min(k - 1, int(k * 0.98))]:.1f}  max {every[-1]:.1f}")
    sampler.close()
    fs.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
