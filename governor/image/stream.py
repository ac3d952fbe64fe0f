"""A layer's uncompressed stream as the unpacker reads it: hashed (its sha256 is the
layer's diff-id), counted against the layer's :class:`~governor.image.limits.LayerBudget`
as it is read, and bounded while tarfile reads the headers before each member."""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib
from typing import BinaryIO

from governor.errors import GovernorError
from governor.image.limits import LayerBudget

#: the most read from the stream at once, whatever the caller asks
CHUNK = 1 << 20


class SourceBroken(GovernorError):
    """Reading (or decompressing) the archive failed: it is truncated or corrupt."""

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(str(cause))


class HeadersTooLarge(GovernorError):
    """More than :data:`~governor.image.limits.MAX_MEMBER_HEADERS` bytes read before
    tarfile gave a member."""


class LayerStream(io.RawIOBase):
    """The uncompressed stream, hashed and counted against the layer's budget as tarfile
    reads it; read errors become :class:`SourceBroken` so they are told apart from errors
    writing the layer.

    ``header_limit`` is the stream position tarfile may reach while it reads the headers of
    the next member (None while a member's data is read): tarfile reads a pax header, a GNU
    long name or a sparse map into memory whole, whatever size its header declares."""

    def __init__(self, inner: BinaryIO | gzip.GzipFile, budget: LayerBudget) -> None:
        self.inner = inner
        self.budget = budget
        self.hash = hashlib.sha256()
        self.count = 0
        self.header_limit: int | None = None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > CHUNK:  # never the whole stream at once (a gzip bomb)
            size = CHUNK
        try:
            data = self.inner.read(size)
        except (OSError, EOFError, zlib.error) as e:
            raise SourceBroken(e) from e
        self.count += len(data)
        self.budget.read(len(data))
        if self.header_limit is not None and self.count > self.header_limit:
            raise HeadersTooLarge
        self.hash.update(data)
        return data

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def drain(self) -> None:
        while self.read(CHUNK):
            pass
