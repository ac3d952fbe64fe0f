"""Unpacking one layer: contents, ownership and modes, whiteouts in overlayfs form, and a
table of hostile archives each refused with nothing written outside the layer."""

from __future__ import annotations

import errno
import gzip
import io
import os
import shutil
import stat
import struct
import tarfile
import tempfile
from pathlib import Path

import pytest

from governor.image.errors import LayerLimit, LowSpace, StoreError, UnsafeLayer
from governor.image.limits import RECHECK_ENTRIES, ImportLimits, LayerBudget
from governor.image.unpack import OPAQUE_XATTR, member_parts, unpack_layer
from tests.unit.oci_writer import (
    Member,
    base_members,
    device,
    directory,
    file,
    hardlink,
    make_tar,
    sha256,
    sparse_file,
    symlink,
    upper_members,
)

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="whiteouts (mknod) and ownership need root")


def unpack(members: list[Member], dest: Path, *, gz: bool = True, image: str = "t:1",
           as_root: bool | None = None) -> str:
    tar = make_tar(members)
    dest.mkdir(exist_ok=True)
    blob = io.BytesIO(gzip.compress(tar) if gz else tar)
    got = unpack_layer(blob, str(dest), compression="gzip" if gz else "none", image=image,
                       layer="sha256:feed", as_root=as_root)
    assert got.diff_id == sha256(tar)
    assert got.size > 0
    return got.diff_id


@pytest.mark.parametrize(("name", "parts"), [
    ("a/b", ["a", "b"]), ("./a//b/", ["a", "b"]), (".", []), ("./", []),
    ("a/./b", ["a", "b"]), ("..foo/bar..", ["..foo", "bar.."]),
])
def test_member_parts(name: str, parts: list[str]) -> None:
    assert member_parts(name) == parts


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../x", "a/..", "a\0b"])
def test_member_parts_refuses(name: str) -> None:
    with pytest.raises(ValueError, match=r"absolute|climb|NUL"):
        member_parts(name)


@needs_root
def test_base_layer_contents_modes_and_owners(tmp_path: Path) -> None:
    d = tmp_path / "layer"
    unpack(base_members(), d)
    assert (d / "etc/hostname").read_bytes() == b"base\n"
    tool = (d / "usr/bin/tool").stat()
    assert stat.S_IMODE(tool.st_mode) == 0o4755  # setuid kept as the archive says
    owned = (d / "usr/bin/owned").stat()
    assert (owned.st_uid, owned.st_gid, stat.S_IMODE(owned.st_mode)) == (1234, 5678, 0o640)
    assert os.readlink(d / "usr/bin/sh") == "/bin/busybox"  # a symlink is stored, not followed
    assert (d / "usr/bin/tool2").stat().st_ino == tool.st_ino
    assert stat.S_IMODE((d / "var").stat().st_mode) == 0o700
    assert (d / "etc").stat().st_mtime == 1_700_000_000  # directory times set after members


@needs_root
def test_whiteouts_become_overlayfs_whiteouts(tmp_path: Path) -> None:
    d = tmp_path / "upper"
    unpack(upper_members(), d)
    wh = (d / "etc/motd").lstat()
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == os.makedev(0, 0)
    assert not (d / "etc/.wh.motd").exists()
    assert os.getxattr(d / "data", OPAQUE_XATTR) == b"y"
    assert not (d / "data/.wh..wh..opq").exists()
    assert (d / "data/new").read_bytes() == b"new data\n"
    assert sorted(os.listdir(d / "etc")) == ["added", "motd"]


@needs_root
def test_a_whiteout_never_hides_a_file_of_its_own_layer(tmp_path: Path) -> None:
    d = tmp_path / "l"
    unpack([file("a", b"mine"), file(".wh.a"), file(".wh.b"), file("b", b"later")], d)
    assert (d / "a").read_bytes() == b"mine"
    assert (d / "b").read_bytes() == b"later"  # a later entry replaces the whiteout


def test_later_entries_replace_earlier_ones(tmp_path: Path) -> None:
    d = tmp_path / "l"
    unpack([directory("x"), file("x/inner", b"1"), file("x", b"now a file"),
            file("y", b"old"), file("y", b"new"), symlink("z", "a"), file("z", b"file")],
           d, as_root=False)
    assert (d / "x").read_bytes() == b"now a file"
    assert (d / "y").read_bytes() == b"new"
    assert not (d / "z").is_symlink()


@needs_root
def test_archive_xattrs_only_file_capabilities_pass(tmp_path: Path) -> None:
    # VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE, CAP_NET_RAW (13) permitted
    cap = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
    d = tmp_path / "l"
    unpack([file("ping", b"\x7fELF", mode=0o755, xattrs={"security.capability": cap}),
            directory("dir"), file("dir/f", xattrs={OPAQUE_XATTR: b"y"})], d)
    assert os.getxattr(d / "ping", "security.capability") == cap
    with pytest.raises(OSError):  # a layer cannot make overlayfs see an opaque directory
        os.getxattr(d / "dir/f", OPAQUE_XATTR)


HOSTILE: list[tuple[str, list[Member], str, str]] = [
    ("dotdot", [file("../escape", b"x")], "../escape", "climb out"),
    ("dotdot-deep", [directory("a"), file("a/../../escape", b"x")], "a/../../escape",
     "climb out"),
    ("absolute", [file("/OUTSIDE/abs", b"x")], "/OUTSIDE/abs", "absolute"),
    ("symlink-then-write-through", [symlink("link", "/OUTSIDE"), file("link/evil", b"x")],
     "link/evil", "link is a symlink"),
    ("relative-symlink-through", [symlink("up", "../../.."), directory("up/x")], "up/x",
     "up is a symlink"),
    ("hardlink-outside", [hardlink("h", "../../OUTSIDE/secret")], "h", "climb out"),
    ("hardlink-absolute", [hardlink("h", "/OUTSIDE/secret")], "h", "absolute"),
    ("hardlink-through-symlink", [symlink("s", "/OUTSIDE"), hardlink("h", "s/secret")], "h",
     "s is a symlink"),
    ("char-device", [device("dev/mem", tarfile.CHRTYPE, 1, 1)], "dev/mem", "character device"),
    ("block-device", [device("sda", tarfile.BLKTYPE, 8, 0)], "sda", "block device"),
    ("fifo", [device("pipe", tarfile.FIFOTYPE, 0, 0)], "pipe", "fifo"),
    ("whiteout-of-dotdot", [file("a/.wh...")], "a/.wh...", "names no file"),
    ("name-too-long", [file("x" * 300, b"x")], "x" * 300, "ENAMETOOLONG"),
    ("hardlink-to-what-it-replaces", [directory("a"), file("a/f"), hardlink("a", "a/f")], "a",
     "ENOENT"),
]


@pytest.mark.parametrize(("members", "member", "why"), [h[1:] for h in HOSTILE],
                         ids=[h[0] for h in HOSTILE])
def test_hostile_members_are_refused(tmp_path: Path, members: list[Member], member: str,
                                     why: str) -> None:
    outside = tmp_path / "OUTSIDE"
    outside.mkdir()
    (outside / "secret").write_text("s")
    # names in the table say /OUTSIDE; point them at this test's own directory
    fixed = []
    for ti, data in members:
        ti.name = ti.name.replace("/OUTSIDE", str(outside))
        ti.linkname = ti.linkname.replace("/OUTSIDE", str(outside))
        fixed.append((ti, data))
    layer = tmp_path / "store" / "l"
    layer.parent.mkdir()
    with pytest.raises(UnsafeLayer) as e:
        unpack(fixed, layer, image="acme/web:1")
    msg = str(e.value)
    want = member.replace("/OUTSIDE", str(outside))
    assert f"image acme/web:1: layer sha256:feed: member {want!r}" in msg, msg
    assert why in msg, msg
    assert sorted(os.listdir(outside)) == ["secret"]  # nothing written outside
    assert (outside / "secret").read_text() == "s"
    assert not (tmp_path / "escape").exists() and not (tmp_path / "store" / "escape").exists()


def test_truncated_gzip_is_refused(tmp_path: Path) -> None:
    blob = gzip.compress(make_tar([file("big", os.urandom(200_000))]))
    d = tmp_path / "l"
    d.mkdir()
    with pytest.raises(UnsafeLayer, match="truncated or corrupt gzip stream"):
        unpack_layer(io.BytesIO(blob[: len(blob) // 2]), str(d), compression="gzip",
                     image="t:1", layer="sha256:feed")


def test_truncated_tar_is_refused(tmp_path: Path) -> None:
    tar = make_tar([file("a", b"x" * 5000), file("b", b"y" * 5000)])
    d = tmp_path / "l"
    d.mkdir()
    with pytest.raises(UnsafeLayer, match=r"member 'a': truncated or corrupt tar archive \("):
        unpack_layer(io.BytesIO(tar[:1500]), str(d), compression="none", image="t:1",
                     layer="sha256:feed")


def test_garbage_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "l"
    d.mkdir()
    with pytest.raises(UnsafeLayer, match="corrupt"):
        unpack_layer(io.BytesIO(b"not a gzip stream at all" * 50), str(d), compression="gzip",
                     image="t:1", layer="sha256:feed")


def test_without_trusted_xattrs_the_error_names_the_store() -> None:
    """A process that may not set trusted.* xattrs (here: not root) gets a StoreError
    naming the store path, not a traceback."""
    top = Path(tempfile.mkdtemp(prefix="governor-test-"))  # tmp_path's parents are 0700
    try:
        top.chmod(0o755)
        _unpack_unprivileged(top / "l")
    finally:
        shutil.rmtree(top)


def _unpack_unprivileged(d: Path) -> None:
    d.mkdir()
    tar = make_tar([directory("d"), file("d/.wh..wh..opq")])
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child drops root, then unpacks
        os.close(r)
        code = 3
        try:
            if ROOT:
                os.chown(d, 65534, 65534)
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            unpack_layer(io.BytesIO(tar), str(d), compression="none", image="t:1",
                         layer="sha256:feed", as_root=False)
        except StoreError as e:
            os.write(w, str(e).encode())
            code = 0
        except BaseException as e:
            os.write(w, repr(e).encode())
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        msg = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, msg
    assert f"image store {d}" in msg and OPAQUE_XATTR in msg and "EPERM" in msg, msg


# -- limits: what a layer may take (governor.image.limits) -----------------------------------
MiB = 1 << 20
ZEROS = bytes(4 * MiB)  # gzips to about 4 KiB


def unpack_within(blob: bytes, dest: Path, limits: ImportLimits, *, gz: bool = True,
                  free: int = 1 << 50) -> LayerBudget:
    dest.mkdir(exist_ok=True)
    budget = LayerBudget(limits, image="bomb:1", layer="sha256:feed", where=str(dest),
                         free=lambda _path: free)
    unpack_layer(io.BytesIO(gzip.compress(blob) if gz else blob), str(dest),
                 compression="gzip" if gz else "none", image="bomb:1", layer="sha256:feed",
                 budget=budget)
    return budget


def files_in(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


SIZE_KEY = ('the limit is images.max_layer_size = "1M"; to import it, raise max_layer_size '
            "in the [images] section of the configuration")

BOMBS: list[tuple[str, bytes, str]] = [
    # one file of zeros: its declared size is refused before a byte of it is written
    ("gzip-bomb-one-file", make_tar([file("zeros", ZEROS)]),
     "member 'zeros': 4194304 bytes, which would take the layer's files past 1048576 bytes"),
    # many files under the limit each, over it together: the stream passes it first
    ("gzip-bomb-many-files", make_tar([file(f"z{i}", bytes(64 << 10)) for i in range(32)]),
     "uncompresses to more than 1048576 bytes"),
    # a small tar, then megabytes of zeros after its end: the stream itself is counted
    ("gzip-bomb-trailer", make_tar([file("a", b"x")]) + ZEROS,
     "uncompresses to more than 1048576 bytes"),
    # a sparse file: a few hundred bytes in the archive, its logical size written out
    ("sparse", make_tar([sparse_file("holes", 4 * MiB)]),
     "member 'holes': 4194304 bytes, which would take"),
    # sparse files under the limit each, over it together: the files written are counted
    ("sparse-many", make_tar([sparse_file("s0", 600 << 10), sparse_file("s1", 600 << 10)]),
     "member 's1': 614400 bytes, which would take the layer's files past 1048576 bytes"),
]


@pytest.mark.parametrize(("tar", "why"), [b[1:] for b in BOMBS], ids=[b[0] for b in BOMBS])
def test_a_layer_larger_than_max_layer_size_is_refused(tmp_path: Path, tar: bytes,
                                                        why: str) -> None:
    assert len(gzip.compress(tar)) < 64 << 10  # small on the wire
    d = tmp_path / "l"
    with pytest.raises(LayerLimit) as e:
        unpack_within(tar, d, ImportLimits(max_layer_size=MiB))
    msg = str(e.value)
    assert msg.startswith("image bomb:1: layer sha256:feed: "), msg
    assert why in msg and SIZE_KEY in msg, msg
    assert e.value.key == "images.max_layer_size" and e.value.exit_code == 1
    assert sum(p.stat().st_size for p in d.rglob("*") if p.is_file()) <= MiB


def test_under_the_limits_a_sparse_file_is_unpacked_whole(tmp_path: Path) -> None:
    d = tmp_path / "l"
    budget = unpack_within(make_tar([sparse_file("holes", 2 * MiB, b"end"), file("a", b"x")]),
                           d, ImportLimits(max_layer_size=4 * MiB, max_layer_entries=2))
    data = (d / "holes").read_bytes()
    assert len(data) == 2 * MiB and data.endswith(b"end") and not data[:-3].strip(b"\0")
    assert budget.written == 2 * MiB + 1 and budget.entries == 2
    assert budget.stream < 16 << 10  # what was read: the archive, not the holes


def test_too_many_entries_are_refused(tmp_path: Path) -> None:
    d = tmp_path / "l"
    with pytest.raises(LayerLimit, match=r"^image bomb:1: layer sha256:feed: member 'f20': "
                       r"more than 20 entries: the limit is images.max_layer_entries = 20; "
                       r"to import it, raise max_layer_entries in the \[images\] section"):
        unpack_within(make_tar([file(f"f{i}") for i in range(50)]), d,
                      ImportLimits(max_layer_entries=20))
    assert len(files_in(d)) == 20


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_headers_past_one_mib_are_refused_before_they_are_read(tmp_path: Path,
                                                               fmt: int) -> None:
    """A pax header or a GNU long name that declares 2 MiB: tarfile would read it into
    memory whole; it is refused after 1 MiB and a record of it."""
    ti, data = file("a" * (2 * MiB) if fmt == tarfile.GNU_FORMAT else "a", b"x")
    if fmt == tarfile.PAX_FORMAT:
        ti.pax_headers["comment"] = "c" * (2 * MiB)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        tf.addfile(file("first", b"1")[0], io.BytesIO(b"1"))
        tf.addfile(ti, io.BytesIO(data))
    with pytest.raises(UnsafeLayer, match=r"more than 1048576 bytes of headers \(pax extended "
                       r"headers, GNU long names, sparse maps\) for one member after member "
                       r"'first'"):
        unpack_within(buf.getvalue(), tmp_path / "l", ImportLimits())
    assert files_in(tmp_path / "l") == ["first"]


def test_headers_under_one_mib_are_read(tmp_path: Path) -> None:
    ti, data = file("a", b"x")
    ti.pax_headers["comment"] = "c" * (MiB - 4096)
    unpack_within(make_tar([file("first", b"1"), (ti, data)]), tmp_path / "l",
                  ImportLimits())
    assert (tmp_path / "l" / "a").read_bytes() == b"x"


def test_chained_extended_headers_are_refused(tmp_path: Path) -> None:
    """Each pax header before a member makes tarfile recurse once: 600 of them (600 KiB,
    under the 1 MiB of headers) pass Python's recursion limit."""
    ti, data = file("a", b"x")
    ti.pax_headers["comment"] = "c"
    one = make_tar([(ti, data)])
    pax_record = one[:1024]  # the pax header block and its data block
    with pytest.raises(UnsafeLayer, match="extended headers chained too deeply"):
        unpack_within(pax_record * 600 + one, tmp_path / "l", ImportLimits())


def test_low_free_space_is_refused_before_a_file_is_written(tmp_path: Path) -> None:
    d = tmp_path / "l"
    with pytest.raises(LowSpace) as e:
        unpack_within(make_tar([file("small", b"s"), file("big", bytes(16 * MiB))]), d,
                      ImportLimits(min_free_space=90 * MiB), free=100 * MiB)
    msg = str(e.value)
    assert msg.startswith(f"image store {d}: image bomb:1: layer sha256:feed: member 'big': "
                          "104857600 bytes are free on its filesystem and it needs 16777216 "
                          "bytes: 88080384 would be left, less than images.min_free_space "
                          '= "90M" keeps free'), msg
    assert "lower min_free_space in the [images] section" in msg
    assert e.value.exit_code == 2 and e.value.errno == errno.ENOSPC
    assert files_in(d) == ["small"]


def test_free_space_is_measured_again_while_entries_are_made(tmp_path: Path) -> None:
    calls: list[str] = []

    def free(path: str) -> int:
        calls.append(path)
        return 10 * MiB  # the reserve is 20M: refused at the first measure

    d = tmp_path / "l"
    d.mkdir()
    budget = LayerBudget(ImportLimits(min_free_space=20 * MiB), image="bomb:1",
                         layer="sha256:feed", where=str(d), free=free)
    tar = make_tar([file(f"f{i}") for i in range(RECHECK_ENTRIES + 10)])
    with pytest.raises(LowSpace, match=f"member 'f{RECHECK_ENTRIES - 1}': 10485760 bytes are "
                       "free on its filesystem, less than images.min_free_space"):
        unpack_layer(io.BytesIO(tar), str(d), compression="none", image="bomb:1",
                     layer="sha256:feed", budget=budget)
    assert calls == [str(d)]
    assert len(files_in(d)) == RECHECK_ENTRIES - 1


@needs_root
@pytest.mark.parametrize(("member", "value", "why"), [
    (directory("dir"), b"bogus", "EINVAL"),            # set once the layer's members are in
    (file("ping", b"\x7fELF"), b"c" * 70_000, "E2BIG"),  # past the kernel's 64 KiB
])
def test_a_capability_the_kernel_refuses_is_the_layers_fault(
        tmp_path: Path, member: Member, value: bytes, why: str) -> None:
    ti, data = member
    ti.pax_headers["SCHILY.xattr.security.capability"] = value.decode()
    with pytest.raises(UnsafeLayer, match=rf"member '{ti.name}': \[{why}\]"):
        unpack([(ti, data)], tmp_path / "l")
