"""A fake cgroupfs for parser and planning tests: a temp dir fed with real kernel output.

Like below's test fake (``create_file_with_content``, ``create_child``): it never pretends
to enforce anything; behaviour only the kernel can show is tested in tests/kernel/.
The file contents below were read from a Debian 6.1 kernel (the sandbox VM).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from governor.cgroupfs.reader import ACCELERATED

#: ``accelerated=`` values of StatReader / Sampler: the pure-Python path, and the C
#: accelerator's (skipped, saying so, when it is not built)
READ_PATHS = [
    pytest.param(False, id="python"),
    pytest.param(True, id="c", marks=pytest.mark.skipif(
        not ACCELERATED, reason="governor.cgroupfs._fastread not in use (not built: "
        "pip install -e .; or GOVERNOR_PURE_PYTHON=1)")),
]

# a freshly created leaf group with cpu io memory pids enabled, Linux 6.1
LEAF_FILES = {
    "cgroup.controllers": "cpu io memory pids\n",
    "cgroup.subtree_control": "\n",
    "cgroup.events": "populated 0\nfrozen 0\n",
    "cgroup.procs": "",
    "cpu.stat": ("usage_usec 52083\nuser_usec 31250\nsystem_usec 20833\nnr_periods 0\n"
                 "nr_throttled 0\nthrottled_usec 0\nnr_bursts 0\nburst_usec 0\n"),
    "cpu.weight": "100\n",
    "cpu.max": "max 100000\n",
    "memory.current": "270336\n",
    "memory.peak": "1662976\n",
    "memory.swap.current": "0\n",
    "memory.max": "max\n",
    "memory.high": "max\n",
    "memory.low": "0\n",
    "memory.min": "0\n",
    "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    "memory.stat": ("anon 126976\nfile 0\nkernel 135168\nkernel_stack 16384\npagetables 36864\n"
                    "sec_pagetables 0\npercpu 0\nsock 0\nvmalloc 0\nshmem 0\nzswap 0\n"
                    "zswapped 0\nfile_mapped 0\nfile_dirty 0\nfile_writeback 0\n"
                    "swapcached 0\nanon_thp 0\nfile_thp 0\nshmem_thp 0\n"
                    "inactive_anon 122880\nactive_anon 4096\ninactive_file 0\n"
                    "active_file 0\nunevictable 0\nslab_reclaimable 37688\n"
                    "slab_unreclaimable 40544\nslab 78232\nworkingset_refault_anon 0\n"
                    "pgfault 1250\npgmajfault 0\n"),
    "io.stat": "254:0 rbytes=1048576 wbytes=67108864 rios=256 wios=512 dbytes=0 dios=0\n",
    "io.max": "",
    "io.weight": "default 100\n",
    "pids.current": "1\n",
    "pids.max": "max\n",
    "pids.events": "max 0\n",
    "cpu.pressure": ("some avg10=0.00 avg60=0.00 avg300=0.00 total=1523\n"
                     "full avg10=0.00 avg60=0.00 avg300=0.00 total=1320\n"),
    "memory.pressure": ("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
                        "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"),
    "io.pressure": ("some avg10=0.00 avg60=0.00 avg300=0.00 total=24\n"
                    "full avg10=0.00 avg60=0.00 avg300=0.00 total=24\n"),
}


def create_file_with_content(group: Path, name: str, content: str) -> None:
    (group / name).write_text(content)


def create_child(parent: Path, name: str, files: dict[str, str] | None = None) -> Path:
    d = parent / name
    d.mkdir()
    for k, v in (LEAF_FILES if files is None else files).items():
        create_file_with_content(d, k, v)
    return d


def enable(*dirs: Path, controllers: str) -> None:
    """Write ``controllers`` ("cpuset hugetlb") into each directory's
    ``cgroup.subtree_control``, as the kernel lists them: a controller's files in a child
    are read only where its parent enables it (the sampler checks, as the kernel makes
    them only there)."""
    for d in dirs:
        (d / "cgroup.subtree_control").write_text(controllers + "\n")


def create_groups(subtree: Path, groups: int) -> None:
    """``groups`` leaf groups under ``subtree`` (created), in tenants of 100:
    ``t000/g000`` ...; the benchmarks' fake trees."""
    subtree.mkdir(parents=True, exist_ok=True)
    for i in range(groups):
        t, g = divmod(i, 100)
        tdir = subtree / f"t{t:03d}"
        if g == 0:
            create_child(subtree, tdir.name)
        create_child(tdir, f"g{g:03d}")
