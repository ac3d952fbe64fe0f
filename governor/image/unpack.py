"""Unpacking one layer archive safely, converting OCI whiteouts to the overlayfs form.

The daemon runs as root and every archive is hostile, so nothing here trusts a name:

* members are taken one at a time from a streamed ``tarfile`` (never ``extractall``); a
  name that is absolute or holds ``..`` is refused before anything is written;
* each member's parent is reached from the layer's root one component at a time with
  ``openat(O_DIRECTORY|O_NOFOLLOW)``: a symlink of the layer is never followed while later
  members are created (``link -> /tmp/outside`` then ``link/evil`` is refused), and files
  are created with ``O_EXCL|O_NOFOLLOW`` relative to that descriptor;
* a hard link's target is resolved the same way and must be a file of this layer;
* device nodes and fifos are refused (the only ones a layer gets are the whiteouts made
  here); setuid/setgid bits are kept as the archive says, ownership too when root;
* extended attributes from the archive are dropped except ``security.capability``: a
  layer must not set ``trusted.overlay.*`` and steer overlayfs.

Whiteouts (image-spec ``layer.md``, "Whiteouts"), to what overlayfs reads
(``Documentation/filesystems/overlayfs.rst``, "whiteouts and opaque directories"):
``.wh.NAME`` becomes a character device 0/0 named NAME, ``.wh..wh..opq`` the xattr
``trusted.overlay.opaque=y`` on its directory.  The caller unpacks into a fresh temporary
directory and removes it on any error; :func:`unpack_layer` returns the layer's diff-id (the
sha256 of the uncompressed stream), which the caller compares with the image config's.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import math
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from governor.image.errors import StoreError, UnsafeLayer, describe_os_error
from governor.image.fsutil import disk_usage, remove_all
from governor.image.limits import MAX_MEMBER_HEADERS, ImportLimits, LayerBudget
from governor.image.oci import Compression
from governor.image.stream import HeadersTooLarge, LayerStream, SourceBroken

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
WHITEOUT_OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
#: the archive xattrs kept (pax ``SCHILY.xattr.*``): file capabilities (ping and the like)
KEPT_XATTRS = frozenset({"security.capability"})
_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_MTIME = 2**62 // 10**9
#: errors a member's own name or shape causes (a component longer than NAME_MAX, too many
#: links to one file, a hard link to a file an earlier member of the layer removed, an
#: xattr value the kernel refuses or past its 64 KiB): refusals of the layer, not failures
#: of the store
_MEMBER_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EMLINK, errno.EINVAL, errno.ENOENT,
                            errno.E2BIG})


@dataclass(frozen=True)
class Unpacked:
    diff_id: str   # sha256 of the uncompressed archive
    size: int      # bytes the layer takes on disk


def member_parts(name: str) -> list[str]:
    """The path components of a member name inside the layer, or ValueError saying why the
    name would leave it.  ``./a//b/`` -> ``["a", "b"]``; ``.`` -> ``[]`` (the root)."""
    if "\0" in name:
        raise ValueError("a NUL byte in the name")
    if name.startswith("/"):
        raise ValueError("an absolute path: layer members are relative to the layer's root")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError("'..' would climb out of the layer")
    return parts


def _mtime_ns(m: tarfile.TarInfo) -> int:
    t = m.mtime
    if not isinstance(t, int | float) or math.isnan(t):  # NaN from a pax header
        return 0
    return int(min(max(t, 0), _MAX_MTIME) * 10**9)


@dataclass(frozen=True, slots=True)
class _Attrs:
    """What is set on a file or directory after its content: a directory's are kept until
    the end of the layer, so only these (never the member's TarInfo, which holds every pax
    header it came with: up to 1 MiB for each of a million directories)."""

    name: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    xattrs: tuple[tuple[str, bytes], ...]

    @classmethod
    def of(cls, m: tarfile.TarInfo) -> _Attrs:
        kept = tuple((name, value.encode("utf-8", "surrogateescape"))
                     for key, value in m.pax_headers.items()
                     if (name := key.removeprefix("SCHILY.xattr.")) != key
                     and name in KEPT_XATTRS)
        return cls(m.name, m.mode & 0o7777, m.uid, m.gid, _mtime_ns(m), kept)


class _Unpacker:
    def __init__(self, rootfd: int, dest: str, *, image: str, layer: str, as_root: bool,
                 budget: LayerBudget) -> None:
        self.rootfd = rootfd
        self.dest = dest
        self.image = image
        self.layer = layer
        self.as_root = as_root
        self.budget = budget
        self.dirs: dict[tuple[str, ...], _Attrs] = {}

    def refuse(self, member: str | None, why: str) -> UnsafeLayer:
        return UnsafeLayer(self.image, self.layer, member, why)

    def store_error(self, what: str, e: OSError, parts: list[str]) -> StoreError:
        where = os.path.join(self.dest, *parts)
        return StoreError(where, f"{what}: {describe_os_error(e)}", err=e.errno)

    # -- resolution: never through a symlink --------------------------------------------
    @contextlib.contextmanager
    def parent(self, parts: list[str], member: str, *, create: bool = True
               ) -> Iterator[int]:
        """A descriptor of the directory holding ``parts[-1]``, reached from the layer's
        root without following any symlink; missing directories are made (mode 0755, as
        tar does) when ``create``."""
        fd = os.dup(self.rootfd)
        try:
            for i, comp in enumerate(parts[:-1]):
                try:
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise self.refuse(member, f"{'/'.join(parts[:i + 1])} is not a "
                                          "directory of this layer") from None
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
                    what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
                    raise self.refuse(member, f"its parent {'/'.join(parts[:i + 1])} is "
                                      f"{what} in this layer, and governor never writes "
                                      "through one") from None
                os.close(fd)
                fd = nfd
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    def clear(pfd: int, name: str, *, keep_dir: bool) -> bool:
        """Remove what an earlier member left at ``name`` (in a tar the last entry wins);
        True when it is a directory that was kept."""
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            remove_all(name, dir_fd=pfd)
        else:
            os.unlink(name, dir_fd=pfd)
        return False

    # -- members ---------------------------------------------------------------------------
    def member(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        self.budget.entry(m.name)
        try:
            parts = member_parts(m.name)
        except ValueError as e:
            raise self.refuse(m.name, str(e)) from None
        if not parts:  # the layer's root itself
            if not m.isdir():
                raise self.refuse(m.name, "the layer's root must be a directory")
            self.dirs[()] = _Attrs.of(m)
            return
        base = parts[-1]
        try:
            if base == WHITEOUT_OPAQUE:
                self.opaque(parts, m)
            elif base.startswith(WHITEOUT_META_PREFIX):
                return  # aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): skipped, as containerd
            elif base.startswith(WHITEOUT_PREFIX):
                self.whiteout(parts, m)
            elif m.isreg():
                self.regular(tf, parts, m)
            elif m.isdir():
                self.directory(parts, m)
            elif m.issym():
                self.symlink(parts, m)
            elif m.islnk():
                self.hardlink(parts, m)
            elif m.ischr() or m.isblk() or m.isfifo():
                kind = "a character device" if m.ischr() else \
                    "a block device" if m.isblk() else "a fifo"
                raise self.refuse(m.name, f"{kind}: device nodes and fifos are not allowed "
                                  "in image layers (a container gets its own /dev)")
            else:
                raise self.refuse(m.name, f"unsupported tar member type {m.type!r}")
        except (UnsafeLayer, StoreError, SourceBroken, tarfile.TarError):
            raise
        except OSError as e:
            if e.errno in _MEMBER_ERRNOS:  # the archive's fault, not the store's
                raise self.refuse(m.name, describe_os_error(e)) from e
            raise self.store_error(f"writing member {m.name!r}", e, parts) from e

    def regular(self, tf: tarfile.TarFile, parts: list[str], m: tarfile.TarInfo) -> None:
        src = tf.extractfile(m)
        if src is None:
            raise self.refuse(m.name, "a regular file without data")
        self.budget.declare(m.size, m.name)  # a sparse member: its whole logical size
        with self.parent(parts, m.name) as pfd:
            self.clear(pfd, parts[-1], keep_dir=False)
            fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=pfd)
            try:
                while chunk := src.read(_CHUNK):
                    self.budget.write(len(chunk), m.name)
                    _write_all(fd, chunk)
                self.attributes(fd, _Attrs.of(m))
            finally:
                os.close(fd)

    def attributes(self, fd: int, a: _Attrs) -> None:
        if self.as_root:
            os.fchown(fd, a.uid, a.gid)  # before the mode: chown clears setuid bits
        os.fchmod(fd, a.mode)
        if self.as_root:
            for name, value in a.xattrs:
                os.setxattr(fd, name, value)
        os.utime(fd, ns=(a.mtime_ns, a.mtime_ns))

    def directory(self, parts: list[str], m: tarfile.TarInfo) -> None:
        with self.parent(parts, m.name) as pfd:
            if not self.clear(pfd, parts[-1], keep_dir=True):
                os.mkdir(parts[-1], 0o700, dir_fd=pfd)
        self.dirs[tuple(parts)] = _Attrs.of(m)  # mode, owner, times once its members are in

    def symlink(self, parts: list[str], m: tarfile.TarInfo) -> None:
        if not m.linkname or "\0" in m.linkname:
            raise self.refuse(m.name, "a symlink without a valid target")
        with self.parent(parts, m.name) as pfd:
            self.clear(pfd, parts[-1], keep_dir=False)
            os.symlink(m.linkname, parts[-1], dir_fd=pfd)
            if self.as_root:
                os.chown(parts[-1], m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
            t = _mtime_ns(m)
            os.utime(parts[-1], ns=(t, t), dir_fd=pfd, follow_symlinks=False)

    def hardlink(self, parts: list[str], m: tarfile.TarInfo) -> None:
        try:
            target = member_parts(m.linkname)
        except ValueError as e:
            raise self.refuse(m.name, f"hard link to {m.linkname!r}: {e}") from None
        if not target or target == parts:
            raise self.refuse(m.name, f"hard link to {m.linkname!r}: not a file of the layer")
        with self.parent(target, m.name, create=False) as tfd:
            try:
                st = os.stat(target[-1], dir_fd=tfd, follow_symlinks=False)
            except FileNotFoundError:
                raise self.refuse(m.name, f"hard link to {m.linkname!r}, which is not in "
                                  "this layer (yet)") from None
            if stat.S_ISDIR(st.st_mode) or stat.S_ISCHR(st.st_mode) or \
                    stat.S_ISBLK(st.st_mode) or stat.S_ISFIFO(st.st_mode):
                raise self.refuse(m.name, f"hard link to {m.linkname!r}, which is not a "
                                  "regular file or symlink")
            with self.parent(parts, m.name) as pfd:
                self.clear(pfd, parts[-1], keep_dir=False)
                os.link(target[-1], parts[-1], src_dir_fd=tfd, dst_dir_fd=pfd,
                        follow_symlinks=False)

    def whiteout(self, parts: list[str], m: tarfile.TarInfo) -> None:
        name = parts[-1][len(WHITEOUT_PREFIX):]
        if name in ("", ".", ".."):
            raise self.refuse(m.name, "a whiteout that names no file")
        with self.parent(parts, m.name) as pfd:
            try:
                os.stat(name, dir_fd=pfd, follow_symlinks=False)
                return  # a whiteout hides lower layers only, never this layer's own file
            except FileNotFoundError:
                pass
            try:
                os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd)
            except PermissionError as e:
                raise self.store_error(
                    f"whiteout {m.name!r}: cannot create the character device 0/0 overlayfs "
                    "reads as a whiteout (needs root with CAP_MKNOD)", e, parts) from e

    def opaque(self, parts: list[str], m: tarfile.TarInfo) -> None:
        with self.parent(parts, m.name) as pfd:
            try:
                os.setxattr(pfd, OPAQUE_XATTR, b"y")
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                raise StoreError(self.dest, f"opaque directory {'/'.join(parts[:-1]) or '/'}: "
                                 f"the filesystem refuses the xattr {OPAQUE_XATTR} "
                                 f"({describe_os_error(e)}); the store needs root and a "
                                 "filesystem with trusted xattrs (ext4, xfs, btrfs): "
                                 "choose another state_dir", err=e.errno) from e

    def finish_dirs(self) -> None:
        """Directories' modes, owners and times, deepest first, after their members."""
        for parts, m in sorted(self.dirs.items(), key=lambda kv: -len(kv[0])):
            try:
                if parts:
                    with self.parent([*parts], m.name, create=False) as pfd:
                        fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=pfd)
                else:
                    fd = os.dup(self.rootfd)
            except (UnsafeLayer, FileNotFoundError, NotADirectoryError):
                continue  # replaced by a later member that is not a directory
            except OSError as e:
                if e.errno == errno.ELOOP:
                    continue
                raise self.store_error("opening a directory", e, list(parts)) from e
            try:
                self.attributes(fd, m)
            except OSError as e:
                if e.errno in _MEMBER_ERRNOS:  # e.g. a security.capability the kernel refuses
                    raise self.refuse(m.name, describe_os_error(e)) from e
                raise self.store_error(f"directory {m.name!r}", e, list(parts)) from e
            finally:
                os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def unpack_layer(blob: BinaryIO, dest: str, *, compression: Compression, image: str,
                 layer: str, as_root: bool | None = None,
                 budget: LayerBudget | None = None) -> Unpacked:
    """Unpack the archive ``blob`` into the empty directory ``dest``, within ``budget``
    (default: the default limits, measuring the free space of ``dest``).  Raises
    :class:`UnsafeLayer` for a hostile, truncated or corrupt archive (:class:`LayerLimit`
    for one past a limit) and :class:`StoreError` when the store cannot be written
    (:class:`LowSpace` when it would be left too full); the caller removes ``dest``."""
    root = os.geteuid() == 0 if as_root is None else as_root
    if budget is None:
        budget = LayerBudget(ImportLimits(), image=image, layer=layer, where=dest)
    inner: BinaryIO | gzip.GzipFile = blob
    if compression == "gzip":
        inner = gzip.GzipFile(fileobj=blob, mode="rb")
    reader = LayerStream(inner, budget)
    # tarfile reads ahead by up to one record (tarfile.RECORDSIZE) beyond what it parsed
    slack = MAX_MEMBER_HEADERS + tarfile.RECORDSIZE
    rootfd = os.open(dest, _DIR_FLAGS)
    u = _Unpacker(rootfd, dest, image=image, layer=layer, as_root=root, budget=budget)
    current: str | None = None
    try:
        reader.header_limit = slack  # open() reads the first member's headers
        with tarfile.open(fileobj=reader, mode="r|") as tf:
            # next(), not iteration: each member is dropped once it is unpacked, where
            # iterating keeps every TarInfo in tf.members (about 450 bytes each, and each
            # one's pax headers)
            while (m := tf.next()) is not None:
                tf.members.clear()  # type: ignore[attr-defined]  # (typeshed omits it)
                reader.header_limit = None
                current = m.name
                u.member(tf, m)
                # tf.offset: where the next member's headers start, past this one's data
                reader.header_limit = tf.offset + slack
            current = None
        reader.header_limit = None
        reader.drain()
        u.finish_dirs()
    except HeadersTooLarge:
        after = f"after member {current!r}" if current is not None else "at its start"
        raise UnsafeLayer(image, layer, None, f"more than {MAX_MEMBER_HEADERS} bytes of "
                          f"headers (pax extended headers, GNU long names, sparse maps) "
                          f"for one member {after}: governor reads at most that much of "
                          "them, as Go's archive/tar does") from None
    except RecursionError as e:  # tarfile reads chained extended headers recursively
        raise UnsafeLayer(image, layer, current, "extended headers chained too deeply "
                          "before one member") from e
    except SourceBroken as e:
        what = "gzip stream" if compression == "gzip" else "archive"
        raise UnsafeLayer(image, layer, current, f"truncated or corrupt {what} "
                          f"({type(e.cause).__name__}: {e.cause or 'unexpected end'})"
                          ) from e.cause
    except tarfile.TarError as e:
        raise UnsafeLayer(image, layer, current, f"truncated or corrupt tar archive ({e})"
                          ) from e
    finally:
        os.close(rootfd)
    return Unpacked("sha256:" + reader.hash.hexdigest(), disk_usage(dest))
