"""What unpacking one layer may take: uncompressed bytes, entries, and the free space the
state directory's filesystem keeps (the configuration's ``[images]`` section; docs/images.md,
"Limits").

Nothing in an image bounds what unpacking it writes, and its digests only prove that it is
the image it says: a gzip stream inflates up to about 1032 times (deflate's ceiling), so a
16 MiB blob can hold a 16 GiB tar of zeros; a tar can hold millions of empty files; a sparse
member (GNU or pax) declares its logical size, which is written out in full.  So each layer
is unpacked against a :class:`LayerBudget` that counts what is really read and written, and
refuses the layer the moment one count passes its limit:

* the bytes of the uncompressed stream as they are read, headers, padding and whatever
  follows the archive's end included (``max_layer_size``);
* the bytes written to the layer's files, a sparse file's holes included
  (``max_layer_size`` too); a member whose declared size alone would pass it is refused
  before a byte of it is written;
* the tar members (``max_layer_entries``);
* the free space of the state directory's filesystem, measured before each layer and again
  after every :data:`RECHECK_BYTES` written or :data:`RECHECK_ENTRIES` entries made: it
  must stay above ``min_free_space`` (the room the database, the spool and the logs need).

The store unpacks into ``images/tmp/`` and removes that directory on every refusal.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from governor.image.errors import LayerLimit, LowSpace, StoreError, describe_os_error

DEFAULT_MAX_LAYER_SIZE = 16 << 30
DEFAULT_MAX_LAYER_ENTRIES = 1_000_000
DEFAULT_MIN_FREE_SPACE = 1 << 30

KEY_MAX_LAYER_SIZE = "images.max_layer_size"
KEY_MAX_LAYER_ENTRIES = "images.max_layer_entries"
KEY_MIN_FREE_SPACE = "images.min_free_space"

#: the most header bytes (pax extended headers, GNU long names and links, sparse maps) read
#: before one member: tarfile holds them in memory whole.  Go's archive/tar refuses a
#: "special file" (pax header, GNU long name or link) over 1 MiB (``maxSpecialFileSize``,
#: "matches the limit used by libarchive"); not configurable, no real layer comes close
MAX_MEMBER_HEADERS = 1 << 20
#: the free space is measured again after this many bytes written ...
RECHECK_BYTES = 16 << 20
#: ... or this many entries made (directories and inodes take blocks too)
RECHECK_ENTRIES = 4096


@dataclass(frozen=True)
class ImportLimits:
    """The ``[images]`` limits; defaults as in config.example.toml."""

    max_layer_size: int = DEFAULT_MAX_LAYER_SIZE
    max_layer_entries: int = DEFAULT_MAX_LAYER_ENTRIES
    min_free_space: int = DEFAULT_MIN_FREE_SPACE


def free_space(path: str) -> int:
    """Bytes an unprivileged user may still write on the filesystem holding ``path``
    (statvfs ``f_bavail``): the blocks ext4 reserves for root (5% by default) are not
    counted, so the daemon, which runs as root and could take them, leaves them alone too.
    The one place the free space is measured: tests pass another function instead."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def show_size(n: int) -> str:
    """A size as the configuration writes it: ``"16G"``, or a number of bytes."""
    from governor.policy.units import format_size

    text = format_size(n)
    return text if text.isdigit() else f'"{text}"'


class LayerBudget:
    """One layer's account against the limits.  ``where`` is the directory being written
    (its filesystem's free space is the one measured); ``image`` and ``layer`` name what
    the errors are about."""

    def __init__(self, limits: ImportLimits, *, image: str, layer: str, where: str,
                 free: Callable[[str], int] = free_space) -> None:
        self.limits = limits
        self.image = image
        self.layer = layer
        self.where = where
        self.free = free
        self.stream = 0        # bytes of the uncompressed stream read
        self.written = 0       # bytes written to the layer's files
        self.archived = 0      # bytes of a directory's archive written (a directory import)
        self.entries = 0
        self._bytes_unchecked = 0
        self._entries_unchecked = 0

    def _too_large(self, member: str | None, problem: str) -> LayerLimit:
        return LayerLimit(self.image, self.layer, member, problem, key=KEY_MAX_LAYER_SIZE,
                          limit=show_size(self.limits.max_layer_size))

    def check_free(self, need: int = 0, needs: str = "", member: str | None = None) -> None:
        """Refuse when writing ``need`` more bytes (``needs`` says what for) would leave
        less than ``min_free_space`` free."""
        self._bytes_unchecked = self._entries_unchecked = 0
        reserve = self.limits.min_free_space
        if reserve <= 0:
            return
        try:
            free = self.free(self.where)
        except OSError as e:
            raise StoreError(self.where, f"statvfs: {describe_os_error(e)}", err=e.errno
                             ) from e
        if free - need < reserve:
            problem = f"{free} bytes are free on its filesystem"
            if need:
                problem += f" and {needs}: {max(free - need, 0)} would be left"
            raise LowSpace(self.where, self.image, self.layer, member, problem,
                           key=KEY_MIN_FREE_SPACE, limit=show_size(reserve))

    def start(self, expect: int) -> None:
        """Before the layer is unpacked: ``expect`` is its compressed size, the least it
        can take."""
        self.check_free(expect, f"the layer takes at least its compressed size, {expect} "
                        "bytes")

    def read(self, n: int) -> None:
        """``n`` more bytes of the uncompressed stream were read (nothing is written from
        them before this returns)."""
        self.stream += n
        if self.stream > self.limits.max_layer_size:
            raise self._too_large(None, f"uncompresses to more than "
                                  f"{self.limits.max_layer_size} bytes")

    def entry(self, member: str) -> None:
        """One more member of the archive."""
        self.entries += 1
        if self.entries > self.limits.max_layer_entries:
            raise LayerLimit(self.image, self.layer, member, f"more than "
                             f"{self.limits.max_layer_entries} entries",
                             key=KEY_MAX_LAYER_ENTRIES,
                             limit=str(self.limits.max_layer_entries))
        self._entries_unchecked += 1
        if self._entries_unchecked >= RECHECK_ENTRIES:
            self.check_free(member=member)

    def declare(self, size: int, member: str) -> None:
        """Before a file of ``size`` bytes (as its header declares) is written."""
        if self.written + size > self.limits.max_layer_size:
            raise self._too_large(member, f"{size} bytes, which would take the layer's "
                                  f"files past {self.limits.max_layer_size} bytes")
        if self._bytes_unchecked + size >= RECHECK_BYTES:
            self.check_free(size, f"it needs {size} bytes", member)

    def write(self, n: int, member: str) -> None:
        """``n`` more bytes are about to be written to a file of the layer: what is really
        written, a sparse file's holes included, not what its header declared."""
        self.written += n
        if self.written > self.limits.max_layer_size:
            raise self._too_large(member, f"the layer's files take more than "
                                  f"{self.limits.max_layer_size} bytes")
        self._bytes_unchecked += n
        if self._bytes_unchecked >= RECHECK_BYTES:
            self.check_free(member=member)

    def archive(self, n: int) -> None:
        """``n`` more bytes of a directory's archive are about to be written to
        ``images/tmp/`` (a directory import: the archive is as large as the layer)."""
        self.archived += n
        if self.archived > self.limits.max_layer_size:
            raise self._too_large(None, f"the directory archives to more than "
                                  f"{self.limits.max_layer_size} bytes")
        self._bytes_unchecked += n
        if self._bytes_unchecked >= RECHECK_BYTES:
            self.check_free()
