"""The only code that touches a cgroup filesystem.

* :mod:`.files`  the choke point (openat2 beneath the root, errors with path/value/errno)
* :mod:`.parse`  pure parsers of the interface file formats
* :mod:`.reader` the sampler's fd-caching pread reader
* :mod:`.tree`   create (controllers enabled top-down), remove, move
* :mod:`.ownership` the marks of what governor made and of what was delegated
* :mod:`.listing` a subtree's groups (kept until inotify reports a change)
* :mod:`.keepwarm` no-op migrations that keep moves fast
* :mod:`.mount`  finding and verifying the cgroup2 mount
* :mod:`.names`  validation of group names before any path is built
"""

from governor.cgroupfs.files import CGROUP2_SUPER_MAGIC, CgroupFS
from governor.cgroupfs.names import check_name, check_relpath
from governor.cgroupfs.reader import GroupStats, StatReader

__all__ = ["CGROUP2_SUPER_MAGIC", "CgroupFS", "GroupStats", "StatReader", "check_name",
           "check_relpath"]
