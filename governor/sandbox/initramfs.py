"""Pure building blocks of `governor sandbox setup`: no subprocesses, no network.

* :func:`extract_vmlinux`: the uncompressed ELF kernel out of a bzImage (QEMU boots it via
  PVH, about twice as fast under TCG as the bzImage).
* :func:`parse_modules_dep` / :func:`load_order`: which ``.ko`` files the guest init must
  ``insmod``, dependencies first, from the kernel's ``modules.dep``.
* :func:`cpio_newc`: the initramfs archive (the "newc" format the kernel unpacks).
* :func:`elf_is_static`: the initramfs has no C library, so busybox must be static.
"""

from __future__ import annotations

import lzma
import stat
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from governor.errors import GovernorError

_ELF_MAGIC = b"\x7fELF"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZIP_MAGIC = b"\x1f\x8b\x08"
_PT_INTERP = 3


class SandboxBuildError(GovernorError):
    """An input of the sandbox build (kernel image, module index, busybox) is not usable."""


def extract_vmlinux(bzimage: bytes) -> bytes:
    """Return the uncompressed ELF kernel embedded in ``bzimage`` (xz or gzip payload).

    Every occurrence of a compression magic is tried, since the bytes can also appear
    by chance before the real payload; the first one that decompresses to an ELF wins.
    """
    for magic, decompress in ((_XZ_MAGIC, _unxz), (_GZIP_MAGIC, _gunzip)):
        start = bzimage.find(magic)
        while start >= 0:
            try:
                data = decompress(bzimage[start:])
            except (lzma.LZMAError, zlib.error, EOFError):
                data = b""
            if data.startswith(_ELF_MAGIC):
                return data
            start = bzimage.find(magic, start + 1)
    raise SandboxBuildError(
        "no xz or gzip compressed ELF kernel found in the kernel image "
        "(is it an x86 bzImage from Debian's linux-image package?)"
    )


def _unxz(data: bytes) -> bytes:
    # the decompressor stops at the end of the first stream and ignores what follows
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)


def _gunzip(data: bytes) -> bytes:
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)


def module_name(path: str) -> str:
    """``kernel/fs/9p/9p.ko.xz`` -> ``9p``; dashes and underscores are the same to kmod."""
    base = path.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """Parse ``modules.dep``: module name -> (its path, the paths it depends on)."""
    result: dict[str, tuple[str, list[str]]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        path, sep, deps = line.partition(":")
        if not sep:
            raise SandboxBuildError(f"modules.dep: malformed line {raw!r}")
        result[module_name(path)] = (path.strip(), deps.split())
    return result


def load_order(
    wanted: Iterable[str],
    deps: Mapping[str, tuple[str, list[str]]],
    builtin: Iterable[str] = (),
) -> list[str]:
    """Paths of the modules to load for ``wanted``, each after everything it needs.

    A module built into the kernel needs no loading; one that is neither built in nor in
    ``deps`` is an error (the kernel package does not have what the guest needs).
    """
    builtin_names = {module_name(b) for b in builtin}
    by_path = {path: name for name, (path, _) in deps.items()}
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in seen:
            return
        if name in chain:
            raise SandboxBuildError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        if name not in deps:
            if name in builtin_names:
                seen.add(name)
                return
            raise SandboxBuildError(
                f"kernel module {name!r} is neither built in nor in modules.dep"
            )
        path, needs = deps[name]
        for dep_path in needs:
            visit(by_path.get(dep_path, module_name(dep_path)), (*chain, name))
        seen.add(name)
        order.append(path)

    for w in wanted:
        visit(w.replace("-", "_"), ())
    return order


@dataclass(frozen=True)
class CpioEntry:
    """One file, directory or symlink of the initramfs (``data`` is a symlink's target)."""

    name: str
    mode: int
    data: bytes = b""

    @classmethod
    def directory(cls, name: str) -> CpioEntry:
        return cls(name, stat.S_IFDIR | 0o755)

    @classmethod
    def file(cls, name: str, data: bytes, perm: int = 0o644) -> CpioEntry:
        return cls(name, stat.S_IFREG | perm, data)

    @classmethod
    def symlink(cls, name: str, target: str) -> CpioEntry:
        return cls(name, stat.S_IFLNK | 0o777, target.encode())


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def cpio_newc(entries: Iterable[CpioEntry]) -> bytes:
    """An uncompressed "newc" (SVR4, no CRC) cpio archive of ``entries``, in their order.

    Owner root, mtime 0: the same inputs always give the same bytes.
    """
    out = bytearray()
    ino = 1
    for e in (*entries, CpioEntry("TRAILER!!!", 0)):
        name = e.name.lstrip("/").encode() or b"."
        fields = (
            ino if e.name != "TRAILER!!!" else 0,
            e.mode,
            0,  # uid
            0,  # gid
            2 if stat.S_ISDIR(e.mode) else 1,  # nlink
            0,  # mtime
            len(e.data),
            0, 0, 0, 0,  # dev major/minor, rdev major/minor
            len(name) + 1,
            0,  # check
        )
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        out += header + name + b"\0"
        out += _pad4(len(header) + len(name) + 1)
        out += e.data + _pad4(len(e.data))
        ino += 1
    return bytes(out)


def elf_is_static(data: bytes) -> bool:
    """True for a 64-bit little-endian ELF executable with no program interpreter."""
    if len(data) < 64 or not data.startswith(_ELF_MAGIC) or data[4] != 2 or data[5] != 1:
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        off = phoff + i * phentsize
        if off + 4 > len(data):
            return False
        p_type, = struct.unpack_from("<I", data, off)
        if p_type == _PT_INTERP:
            return False
    return True
