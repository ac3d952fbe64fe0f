# needs: kernel
"""Sampling pass cost per group against the physical limit (C) and systemd-cgtop (issue 5).

Run inside the sandbox (``bench/run sampling``; bench/run first compiles
``bench/sampling_peer.c`` on the host into ``bench/build/``, which the guest sees through the
shared host root; without it the guest compiles it into its /tmp).

Builds a scratch subtree of the VM's cgroup2 root as governor manages it: tenants ``tNNN``
with 100 groups each (cpu io memory pids enabled), grown to each N of
``--groups`` in turn (leaves made with ``os.mkdir`` in a tight loop once the controllers are
enabled at the parents), one sleeping process in the first group of every tenant.  Per N:

* ``Sampler.sample()``: the daemon's pass (lists the groups, reads them, builds the
  ``GroupSample`` objects), after one warm-up pass that opens the descriptors (and reads
  ``memory.stat``: the timed passes are the fast tier, the one of ``FAST_FILES``);
* the bare ``StatReader.read`` loop over the same groups (the sampler's reader and fds);
* ``sampling_peer`` (C, kept running): opens the same ``FAST_FILES`` of the same groups
  once, then preads them and parses the numbers, one pass when asked;
* ``systemd-cgtop -b -n 1 --depth=3`` over the whole tree: the whole process (start-up
  included), from the child's rusage, median of 3 runs.

CPU time everywhere (``time.process_time`` for our passes, CLOCK_PROCESS_CPUTIME_ID in the C
program, the child's rusage for systemd-cgtop).  The guest's CPU clock also counts the time
the host takes the vCPU away (TCG has no steal time), so the contenders run in ``--rounds``
rounds of one pass each, and the ratios are the medians of the per-round ratios.
"groups" counts every group a pass reads: the N groups plus their N/100 tenants.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from governor.cgroupfs.files import CgroupFS
from governor.cgroupfs.managed import MANAGED_CONTROLLERS
from governor.cgroupfs.reader import ACCELERATED, FAST_FILES, raise_nofile_limit
from governor.cgroupfs.tree import create, move, remove
from governor.metering.sampler import Sampler

ROOT = Path("/sys/fs/cgroup")
PER_TENANT = 100
PEER = Path(__file__).resolve().parent / "build" / "sampling_peer"


def cpu_of(fn: Callable[[], object]) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


class Peer:
    """The C program kept running over ``dirs`` (its files opened once): one pass per call."""

    def __init__(self, exe: Path, dirs: list[str], listing: Path) -> None:
        listing.write_text("\n".join(dirs) + "\n")
        self.proc = subprocess.Popen([str(exe), str(listing), *FAST_FILES],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        word, value = self.stdout.readline().split()
        assert word == "files", word
        self.files = int(value)

    def passes(self, k: int = 1) -> float:
        """CPU seconds of ``k`` passes, by the program's own clock."""
        self.stdin.write(f"{k}\n")
        self.stdin.flush()
        line = self.stdout.readline()
        if not line:
            raise SystemExit(f"sampling_peer died: status {self.proc.wait()}")
        return int(line) / 1e9

    def close(self) -> None:
        self.stdin.close()
        self.stdout.read()
        if self.proc.wait() != 0:
            raise SystemExit(f"sampling_peer failed: status {self.proc.returncode}")


def child_cpu(argv: list[str], stdin: str | None = None) -> tuple[float, str]:
    """Run ``argv`` to completion; its user+system CPU seconds (wait4 rusage), stdout."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else None,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    if stdin is not None:
        assert proc.stdin is not None
        proc.stdin.write(stdin)
        proc.stdin.close()
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {err.strip()}")
    return ru.ru_utime + ru.ru_stime, out


def grow(fs: CgroupFS, scratch: str, have: int, want: int,
         sleepers: list[subprocess.Popen[bytes]]) -> None:
    """Groups ``have .. want-1`` under their tenants (tenant ``i // PER_TENANT``)."""
    for i in range(have, want):
        tenant = f"{scratch}/t{i // PER_TENANT:03d}"
        if i % PER_TENANT == 0:
            create(fs, tenant, MANAGED_CONTROLLERS, enable_for_children=True)
            tdir = ROOT / tenant
        os.mkdir(tdir / f"g{i % PER_TENANT:02d}")
        if i % PER_TENANT == 0:
            p = subprocess.Popen(["sleep", "3600"])
            move(fs, f"{tenant}/g00", p.pid)
            sleepers.append(p)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--groups", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--rounds", type=int, default=7,
                    help="timed rounds per N, each one pass of every contender in turn")
    ap.add_argument("--peer", type=Path, default=PEER)
    args = ap.parse_args()
    if os.environ.get("GOVERNOR_SANDBOX") != "1":
        print("sampling: run inside the sandbox: bench/run sampling", file=sys.stderr)
        return 2
    source = Path(__file__).resolve().parent / "sampling_peer.c"
    if not os.access(args.peer, os.X_OK) or args.peer.stat().st_mtime < source.stat().st_mtime:
        # bench/run compiles bench/NAME_*.c on the host; else the guest's (the host's) cc
        args.peer = Path("/tmp/sampling_peer")
        subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-o", str(args.peer), str(source)],
                       check=True)
    cgtop = shutil.which("systemd-cgtop")
    nofile = raise_nofile_limit()
    print(f"RLIMIT_NOFILE soft limit {nofile}; {args.rounds} timed rounds per N; "
          f"FAST_FILES: {' '.join(FAST_FILES)}; C accelerators (_fastread, _fastsample): "
          f"{'in use' if ACCELERATED else 'not in use'}")
    scratch = f"bench-{uuid.uuid4().hex[:8]}"
    fs = CgroupFS(ROOT)
    sleepers: list[subprocess.Popen[bytes]] = []
    rows = []
    have = 0
    hdr = (f"{'groups':>7} {'files':>7} {'sample() ms':>12} {'us/grp':>7} "
           f"{'read() ms':>10} {'us/grp':>7} {'C ms':>8} {'us/grp':>7} "
           f"{'sample/C':>9} {'read/C':>7} {'cgtop ms':>9}")
    try:
        for n in sorted(args.groups):
            t0 = time.monotonic()
            grow(fs, scratch, have, n, sleepers)
            have = max(have, n)
            made = time.monotonic() - t0
            # the daemon's pass on the fast tier: the warm-up pass (which opens every fd)
            # reads memory.stat too, the timed ones never (slow_every out of reach)
            sampler = Sampler(fs, scratch, "bench", slow_every=1 << 30)
            paths = sampler.groups()
            rels = [f"{scratch}/{p}" for p in paths]
            first = sampler.sample()
            assert first.slow and not first.errors and not first.gone, first.errors
            assert len(first.samples) == len(paths)
            reader = sampler.reader
            read = reader.read

            def read_loop(rels: list[str] = rels, read: Callable[..., object] = read) -> None:
                for rel in rels:
                    read(rel)

            files = sum(f in FAST_FILES for r in rels for f in reader._groups[r].fds)
            peer = Peer(args.peer, [str(ROOT / r) for r in rels], Path(f"/tmp/{scratch}.dirs"))
            assert peer.files == files, (peer.files, files)
            peer.passes()  # warm-up
            t_sample: list[float] = []
            t_read: list[float] = []
            t_c: list[float] = []
            # in rounds: the guest's CPU clock also counts the time the host takes its vCPU
            # away, so contenders are measured close together and compared round by round
            for _ in range(args.rounds):
                t_sample.append(cpu_of(sampler.sample))
                t_read.append(cpu_of(read_loop))
                t_c.append(peer.passes())
            peer.close()
            sampler.close()
            top = "-"
            if cgtop is not None:
                top_s = statistics.median(
                    child_cpu([cgtop, "-b", "-n", "1", "--depth=3"])[0] for _ in range(3))
                top = f"{top_s * 1e3:.0f}"
            g = len(paths)
            s, r, c = (statistics.median(x) for x in (t_sample, t_read, t_c))
            rs = statistics.median(a / b for a, b in zip(t_sample, t_c, strict=True))
            rr = statistics.median(a / b for a, b in zip(t_read, t_c, strict=True))
            row = (f"{g:>7} {files:>7} {s * 1e3:>12.1f} {s / g * 1e6:>7.1f} "
                   f"{r * 1e3:>10.1f} {r / g * 1e6:>7.1f} {c * 1e3:>8.1f} "
                   f"{c / g * 1e6:>7.1f} {rs:>8.2f}x {rr:>6.2f}x {top:>9}")
            rows.append(row)
            print(f"N={n}: {g} groups made in {made:.1f} s wall; best of {args.rounds} "
                  f"rounds: sample() {min(t_sample) * 1e3:.1f} ms, read() "
                  f"{min(t_read) * 1e3:.1f} ms, C {min(t_c) * 1e3:.1f} ms", flush=True)
            print(hdr)
            print(row, flush=True)
    finally:
        for p in sleepers:
            p.kill()
            p.wait()
        if have:
            remove(fs, scratch)
    print("\nall sizes (CPU time per pass, medians of the rounds; ratios: median of the "
          "per-round ratios to the C program's pass):")
    print(hdr)
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
