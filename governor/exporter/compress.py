"""The exposition's gzip copy: ISA-L's deflate (python-isal) when it is installed, else
the standard library's zlib.

Why a library (issue #16): a scrape asks for gzip (Prometheus always does), and at 1,000
groups the exposition is about 2 MB of text.  zlib's level 1 took 78 ms of it in the
project's TCG VM and 3.5 ms on the host; ISA-L's level 1 17.5 ms and 0.6 ms, for the same
size (92 KiB).  Its output is an ordinary gzip member (RFC 1952), which every scraper reads.
``isal`` is a dependency of the package; the fallback keeps a platform without its wheel
working, only slower.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from typing import Final


def _pick() -> tuple[str, Callable[[bytes], bytes], Callable[[bytes], bytes]]:
    try:
        from isal import igzip
    except ImportError:
        return ("zlib", lambda data: gzip.compress(data, compresslevel=1, mtime=0),
                gzip.decompress)
    # level 1 of ISA-L's 0-3: the size of zlib's level 1 (level 0 is no faster here and
    # 50% larger); mtime 0: the same text gives the same bytes
    return ("isal", lambda data: igzip.compress(data, compresslevel=1, mtime=0),
            igzip.decompress)


_PICKED = _pick()
#: which deflate makes the copies: "isal" or "zlib"
ENGINE: Final[str] = _PICKED[0]
_compress: Final = _PICKED[1]
_decompress: Final = _PICKED[2]


def gzip_member(data: bytes) -> bytes:
    """``data`` as one gzip member (members may be concatenated: RFC 1952 2.2)."""
    return _compress(data)


def gunzip(data: bytes) -> bytes:
    """The text of every member of ``data``."""
    return _decompress(data)
