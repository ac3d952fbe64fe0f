"""raise_nofile_limit (governor/cgroupfs/reader.py) reads fs.nr_open below the procfs root
it is given, not the host's /proc."""

from __future__ import annotations

import resource
from pathlib import Path

from governor.cgroupfs.reader import raise_nofile_limit


def test_the_cap_comes_from_the_given_proc_root(tmp_path: Path) -> None:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = before[0]
    (tmp_path / "sys" / "fs").mkdir(parents=True)
    # the fake caps at today's soft limit: nothing to raise, whatever the host allows
    (tmp_path / "sys" / "fs" / "nr_open").write_text(f"{soft}\n")
    assert raise_nofile_limit(soft * 4, proc_root=str(tmp_path)) == soft
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == before
