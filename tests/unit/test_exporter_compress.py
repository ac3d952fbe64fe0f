"""The exposition's gzip copy (governor/exporter/compress.py): ISA-L's when installed, the
standard library's otherwise; either is plain gzip that Prometheus's reader (and Python's)
reads back to the same text, member after member."""

from __future__ import annotations

import builtins
import gzip
import importlib
import zlib
from typing import Any

import pytest
from isal import igzip

from governor.exporter import compress

TEXT = b"".join(
    b'governor_cpu_usage_seconds_total{group="g%03d",node="n",tenant="t"} %d.%06d\n'
    % (i, i * 7, i * 13 % 1000000) for i in range(3000))


def test_the_installed_engine_is_isal() -> None:
    # isal is a dependency of the package (pyproject.toml): the fast path is the one run
    assert compress.ENGINE == "isal"


@pytest.fixture
def without_isal(monkeypatch: pytest.MonkeyPatch) -> Any:
    real = builtins.__import__

    def no_isal(name: str, *args: Any, **kw: Any) -> Any:
        if name == "isal" or name.startswith("isal."):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_isal)
    mod = importlib.reload(compress)
    yield mod
    monkeypatch.setattr(builtins, "__import__", real)
    importlib.reload(compress)


@pytest.mark.parametrize("engine", ["installed", "fallback"])
def test_a_member_reads_back_with_every_reader(engine: str, request: pytest.FixtureRequest
                                               ) -> None:
    mod = request.getfixturevalue("without_isal") if engine == "fallback" else compress
    assert (engine, mod.ENGINE) in {("fallback", "zlib"), ("installed", "isal")}
    gz = mod.gzip_member(TEXT)
    assert gz[:3] == b"\x1f\x8b\x08"        # a gzip member, deflate
    assert len(gz) < len(TEXT) // 5          # compressed, not stored
    assert gzip.decompress(gz) == TEXT
    assert zlib.decompressobj(31).decompress(gz) == TEXT
    assert mod.gunzip(gz) == TEXT
    # the same text, the same bytes (mtime 0): a scrape's copy does not depend on the clock
    assert mod.gzip_member(TEXT) == gz


def test_members_concatenate(without_isal: Any) -> None:
    # the server appends the process's own families as a second member, made by whichever
    # engine is loaded then: both orders read back whole
    slow = without_isal.gzip_member(b"own 1\n")
    fast = igzip.compress(TEXT, compresslevel=1, mtime=0)
    other = igzip.compress(b"own 2\n", compresslevel=1, mtime=0)
    assert gzip.decompress(fast + slow + other) == TEXT + b"own 1\n" + b"own 2\n"
    assert without_isal.gunzip(slow + other) == b"own 1\nown 2\n"


def test_empty_text() -> None:
    assert gzip.decompress(compress.gzip_member(b"")) == b""
