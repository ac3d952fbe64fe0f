"""Where an image comes from: an OCI image layout on disk, or a plain directory.

:func:`read_layout` follows ``index.json`` -> manifest (by tag, or the only one; a nested
multi-platform index picks linux on this machine) -> config and layers, checks every blob's
sha256 digest and size against its descriptor (streamed; before anything is unpacked), and
returns a :class:`SourceImage` whose layers the store unpacks.  :func:`read_directory`
makes a directory one layer: it is archived to a temporary file by walking it with
``openat(O_NOFOLLOW)`` (a symlink in it is stored as a symlink, never followed) and then
unpacked like any other layer.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from governor.image import oci
from governor.image.errors import BadReference, BlobError, LayoutError, describe_os_error
from governor.image.limits import LayerBudget

_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class LayerSource:
    """One layer to unpack: ``open(tmpdir, budget)`` gives its (verified) archive; what
    it writes in ``tmpdir`` to make it (a directory's archive) counts against ``budget``."""

    digest: str                  # the blob's digest (the layer's name in messages)
    diff_id: str | None          # what the config says it uncompresses to; None: unknown
    compression: oci.Compression
    size: int
    open: Callable[[str, LayerBudget], BinaryIO]


@dataclass(frozen=True)
class SourceImage:
    path: str
    digest: str | None           # the manifest's digest; None for a directory
    ref_tag: str | None          # the tag of the manifest read (its ref.name annotation)
    config: oci.ImageConfig
    layers: list[LayerSource]


def _open_blob(layout: str, digest: str) -> tuple[int, str]:
    path = os.path.join(layout, "blobs", oci.ALGORITHM, digest.split(":", 1)[1])
    try:  # O_NONBLOCK: the open of a fifo in a blob's place returns (and is refused below)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BlobError(path, digest, "missing: the layout lacks a blob its descriptors "
                        "name") from None
    except OSError as e:
        problem = "a symlink: blobs must be regular files" if e.errno == errno.ELOOP \
            else f"cannot be opened: {describe_os_error(e)}"
        raise BlobError(path, digest, problem) from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BlobError(path, digest, "not a regular file")
    return fd, path


def verify_blob(layout: str, desc: oci.Descriptor, *, keep: bool = False) -> bytes:
    """Stream the blob ``desc`` names through sha256 and count its bytes; a mismatch of
    either is a :class:`BlobError`.  With ``keep`` the content is returned (JSON
    documents, at most :data:`oci.MAX_JSON` bytes)."""
    fd, path = _open_blob(layout, desc.digest)
    if keep and desc.size > oci.MAX_JSON:  # refused before a byte of it is read
        os.close(fd)
        raise BlobError(path, desc.digest, f"size {desc.size} is more than a JSON document "
                        f"may be ({oci.MAX_JSON} bytes)")
    h = hashlib.sha256()
    kept: list[bytes] = []
    n = 0
    try:
        while n <= desc.size:
            chunk = os.read(fd, min(_CHUNK, desc.size + 1 - n))
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
            if keep:
                kept.append(chunk)
    except OSError as e:
        raise BlobError(path, desc.digest, f"read failed: {describe_os_error(e)}") from e
    finally:
        os.close(fd)
    if n != desc.size:
        raise BlobError(path, desc.digest, f"size is {'more than ' if n > desc.size else ''}"
                        f"{n} bytes, the descriptor says {desc.size}")
    got = "sha256:" + h.hexdigest()
    if got != desc.digest:
        raise BlobError(path, desc.digest, f"content digest is {got}: the blob is corrupt "
                        "or was changed")
    return b"".join(kept)


def _read_small(path: str) -> bytes:
    """``oci-layout`` or ``index.json``: a regular file of at most :data:`oci.MAX_JSON`
    bytes.  Opened with O_NONBLOCK (a fifo put there would block the open forever) and
    measured with fstat before a byte is read: a 2 GiB index.json is refused, not read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise LayoutError(path, f"cannot be read: {describe_os_error(e)}; an OCI image "
                          "layout has oci-layout, index.json and blobs/sha256/",
                          err=e.errno) from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LayoutError(path, "not a regular file")
        if st.st_size > oci.MAX_JSON:
            raise LayoutError(path, f"{st.st_size} bytes, larger than a JSON document of "
                              f"the layout may be ({oci.MAX_JSON} bytes)")
        chunks: list[bytes] = []
        n = 0
        while n <= oci.MAX_JSON:  # read to the end: the file may grow after the fstat
            chunk = os.read(fd, oci.MAX_JSON + 1 - n)
            if not chunk:
                break
            chunks.append(chunk)
            n += len(chunk)
    except OSError as e:
        raise LayoutError(path, f"cannot be read: {describe_os_error(e)}", err=e.errno) from e
    finally:
        os.close(fd)
    if n > oci.MAX_JSON:
        raise LayoutError(path, f"larger than a JSON document of the layout may be "
                          f"({oci.MAX_JSON} bytes)")
    return b"".join(chunks)


def is_layout(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "oci-layout"))


def read_layout(path: str, tag: str | None) -> SourceImage:
    """The image tagged ``tag`` (or the only one) of the OCI image layout at ``path``,
    every blob verified."""
    oci.check_layout_marker(_read_small(os.path.join(path, "oci-layout")),
                            os.path.join(path, "oci-layout"))
    index_path = os.path.join(path, "index.json")
    desc = oci.select_manifest(oci.parse_index(_read_small(index_path), index_path), tag,
                               index_path)
    chosen_tag = oci.ref_tag(desc)
    if desc.media_type in oci.INDEX_TYPES:
        nested = os.path.join(path, "blobs", oci.ALGORITHM, desc.hex)
        desc = oci.select_platform(oci.parse_index(verify_blob(path, desc, keep=True), nested),
                                   nested)
    elif desc.media_type not in oci.MANIFEST_TYPES:
        raise LayoutError(index_path, f"not an image manifest (expected {oci.MEDIA_MANIFEST})",
                          key="manifests[].mediaType", value=desc.media_type)
    man_path = os.path.join(path, "blobs", oci.ALGORITHM, desc.hex)
    manifest = oci.parse_manifest(verify_blob(path, desc, keep=True), man_path)
    conf_path = os.path.join(path, "blobs", oci.ALGORITHM, manifest.config.hex)
    config = oci.parse_config(verify_blob(path, manifest.config, keep=True), conf_path)
    if len(config.diff_ids) != len(manifest.layers):
        raise LayoutError(conf_path, f"lists {len(config.diff_ids)} diff_ids for the "
                          f"manifest's {len(manifest.layers)} layers ({man_path})",
                          key="rootfs.diff_ids")
    layers = []
    for i, layer in enumerate(manifest.layers):
        verify_blob(path, layer)
        layers.append(LayerSource(
            layer.digest, config.diff_ids[i],
            oci.layer_compression(layer.media_type, path=man_path, key=f"layers[{i}]"),
            layer.size, _blob_opener(path, layer.digest)))
    return SourceImage(path, desc.digest, chosen_tag, config, layers)


def _blob_opener(layout: str, digest: str) -> Callable[[str, LayerBudget], BinaryIO]:
    def open_blob(_tmpdir: str, _budget: LayerBudget) -> BinaryIO:
        fd, _ = _open_blob(layout, digest)
        return os.fdopen(fd, "rb")
    return open_blob


# -- a plain directory as one layer -----------------------------------------------------------
def read_directory(path: str) -> SourceImage:
    """A directory imported as a single layer (its diff-id is known once it is archived)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise LayoutError(path, f"cannot be opened as a directory: {describe_os_error(e)}",
                          err=e.errno) from e
    os.close(fd)

    def archive(tmpdir: str, budget: LayerBudget) -> BinaryIO:
        import tempfile

        out = tempfile.TemporaryFile(dir=tmpdir)  # noqa: SIM115 (the caller closes it)
        try:
            write_directory_tar(path, _Budgeted(out, budget))
            out.seek(0)
        except BaseException:
            out.close()
            raise
        return out

    config = oci.ImageConfig(env=[], working_dir="", entrypoint=None, cmd=None, user="",
                             diff_ids=[], architecture=oci.host_architecture())
    return SourceImage(path, None, None, config,
                       [LayerSource(f"dir:{os.path.abspath(path)}", None, "none", 0, archive)])


class _Budgeted(io.RawIOBase):
    """``out``, each write counted against the layer's budget before it is made: a
    directory with a terabyte sparse file (or just a large tree) is refused while it is
    archived into ``images/tmp/``, not once the disk is full."""

    def __init__(self, out: BinaryIO, budget: LayerBudget) -> None:
        self.out = out
        self.budget = budget
        self.refused = False

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.refused:  # tarfile flushing its buffer while the refusal propagates
            return len(data)
        try:
            self.budget.archive(len(data))
        except BaseException:
            self.refused = True
            raise
        return self.out.write(data)


def write_directory_tar(path: str, out: BinaryIO | io.RawIOBase) -> None:
    """Archive the tree at ``path`` into ``out`` (pax), reaching every entry through its
    parent's descriptor with O_NOFOLLOW; an entry swapped while it is read is an error.
    Sockets are skipped (they cannot be archived); devices and fifos are archived, and the
    unpacker refuses them."""
    rootfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    links: dict[tuple[int, int], str] = {}
    try:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            _walk(tf, rootfd, path, "", links)
    except OSError as e:
        where = e.filename or path
        raise LayoutError(str(where), f"cannot be archived: {describe_os_error(e)}",
                          err=e.errno) from e
    except RecursionError as e:  # _walk recurses once per directory level
        raise LayoutError(path, "directories nested too deeply to archive (deeper than "
                          "Python's recursion limit)") from e
    finally:
        os.close(rootfd)


def _walk(tf: tarfile.TarFile, dfd: int, top: str, prefix: str,
          links: dict[tuple[int, int], str]) -> None:
    for name in sorted(os.listdir(dfd)):
        arc = prefix + name
        where = os.path.join(top, arc)
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        ti = tarfile.TarInfo(arc)
        ti.mode = stat.S_IMODE(st.st_mode)
        ti.uid, ti.gid, ti.mtime = st.st_uid, st.st_gid, int(st.st_mtime)
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(name, _DIR_FLAGS, dir_fd=dfd)
            try:
                _same(sub, st, where)
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
                _walk(tf, sub, top, arc + "/", links)
            finally:
                os.close(sub)
        elif stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in links:
                ti.type, ti.linkname = tarfile.LNKTYPE, links[key]
                tf.addfile(ti)
                continue
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                         dir_fd=dfd)
            with os.fdopen(fd, "rb") as f:
                fst = _same(fd, st, where)
                ti.size = fst.st_size
                try:
                    tf.addfile(ti, f)
                except OSError as e:
                    if e.errno is None:  # tarfile's "unexpected end of data"
                        raise LayoutError(where, "changed while it was archived") from e
                    raise
            if st.st_nlink > 1:
                links[key] = arc
        elif stat.S_ISLNK(st.st_mode):
            ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(name, dir_fd=dfd)
            tf.addfile(ti)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or \
                stat.S_ISFIFO(st.st_mode):
            ti.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else \
                tarfile.BLKTYPE if stat.S_ISBLK(st.st_mode) else tarfile.FIFOTYPE
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            tf.addfile(ti)


def _same(fd: int, st: os.stat_result, where: str) -> os.stat_result:
    fst = os.fstat(fd)
    if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
        raise LayoutError(where, "changed while it was archived (replaced)")
    return fst


def read_source(path: str, tag: str | None) -> SourceImage:
    """``PATH[:TAG]`` of ``image import``: an OCI image layout (it has ``oci-layout``), or
    a plain directory (one layer; a tag cannot select anything there)."""
    if not os.path.isdir(path):
        raise BadReference(path, "no such directory: give an OCI image layout (oci-layout, "
                           "index.json, blobs/) or a directory to import as one layer")
    if is_layout(path):
        return read_layout(path, tag)
    if tag is not None:
        raise LayoutError(path, f"not an OCI image layout (no oci-layout file), so tag "
                          f"{tag!r} selects nothing: import the directory as one layer with "
                          f"{path} --name NAME:TAG")
    return read_directory(path)
