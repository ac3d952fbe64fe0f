"""The image store: OCI layouts written on the fly, imported into a tmp state directory;
layers shared, blobs verified, hostile layouts refused with nothing left behind, ``rm``
and the running containers' records, two imports at once."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from governor.image import inuse
from governor.image.errors import (
    BadReference,
    BlobError,
    ImageError,
    ImageInUse,
    ImageNotFound,
    LayerLimit,
    LayoutError,
    LowSpace,
    StoreError,
    UnsafeLayer,
)
from governor.image.limits import ImportLimits
from governor.image.oci import MEDIA_INDEX, MEDIA_MANIFEST
from governor.image.source import read_directory, read_layout, read_source
from governor.image.store import ImageStore
from governor.image.unpack import OPAQUE_XATTR
from tests.unit.oci_writer import (
    TAR_ZSTD,
    LayerBlob,
    OCILayout,
    base_members,
    file,
    gz_layer,
    layer,
    make_tar,
    plain_layer,
    sha256,
    symlink,
    upper_members,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts (mknod) need root")


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(str(tmp_path / "state"))


def two_images(root: Path) -> tuple[OCILayout, LayerBlob, LayerBlob]:
    """A layout with ``base`` (the base layer) and ``app`` (base + the upper layer)."""
    lay = OCILayout(root)
    base, upper = layer(base_members()), layer(upper_members())
    lay.add_image([base], tag="base", cmd=["/bin/sh"])
    lay.add_image([base, upper], tag="app", env=["PATH=/bin", "MODE=prod"],
                  entrypoint=["/usr/bin/tool"], cmd=["--serve"], workdir="/srv",
                  user="1000:1000")
    return lay, base, upper


def leftovers(store: ImageStore) -> list[str]:
    return os.listdir(store.tmp_dir) if os.path.isdir(store.tmp_dir) else []


@needs_root
def test_two_images_share_the_base_layer(tmp_path: Path, store: ImageStore) -> None:
    lay, base, upper = two_images(tmp_path / "oci")
    a = store.import_image(read_layout(str(lay.root), "base"), "base", "1")
    b = store.import_image(read_layout(str(lay.root), "app"), "app", "1")
    assert a.layers == [base.diff_id] and b.layers == [base.diff_id, upper.diff_id]
    assert b.digest == lay.manifests[1]["digest"]
    assert b.config == {"Env": ["PATH=/bin", "MODE=prod"], "WorkingDir": "/srv",
                        "Entrypoint": ["/usr/bin/tool"], "Cmd": ["--serve"],
                        "User": "1000:1000"}
    assert sorted(os.listdir(store.layers_dir)) == sorted(
        [base.diff_id[7:], upper.diff_id[7:]])  # the base is stored once
    low, up = Path(store.layer_path(base.diff_id)), Path(store.layer_path(upper.diff_id))
    assert (low / "etc/motd").read_bytes() == b"welcome\n"  # lower layer untouched
    assert stat.S_ISCHR((up / "etc/motd").lstat().st_mode)
    assert os.getxattr(up / "data", OPAQUE_XATTR) == b"y"
    assert [i.ref for i in store.images()] == ["app:1", "base:1"]
    du = store.usage()
    by = {u.diff_id: u for u in du.layers}
    assert by[base.diff_id].images == ["app:1", "base:1"]
    assert by[upper.diff_id].images == ["app:1"]
    assert du.total == by[base.diff_id].size + by[upper.diff_id].size
    assert du.saved == by[base.diff_id].size > 0
    meta = json.loads(Path(store.meta_path).read_text())
    assert meta["images"]["app:1"]["layers"] == b.layers
    assert leftovers(store) == []


@needs_root
def test_rm_keeps_shared_layers_and_deletes_unused_ones(tmp_path: Path,
                                                        store: ImageStore) -> None:
    lay, base, upper = two_images(tmp_path / "oci")
    store.import_image(read_layout(str(lay.root), "base"), "base", "1")
    store.import_image(read_layout(str(lay.root), "app"), "app", "1")
    assert store.remove("app", "1") == [upper.diff_id]
    assert os.listdir(store.layers_dir) == [base.diff_id[7:]]
    assert store.remove("base", "1") == [base.diff_id]
    assert os.listdir(store.layers_dir) == [] and store.images() == []
    with pytest.raises(ImageNotFound, match=r"no image 'base:1' in the store \(images: none\)"):
        store.remove("base", "1")


@needs_root
def test_rm_refuses_while_a_container_runs_and_succeeds_after(tmp_path: Path,
                                                              store: ImageStore) -> None:
    lay, base, _ = two_images(tmp_path / "oci")
    store.import_image(read_layout(str(lay.root), "base"), "base", "1")
    rec = store.add_container("c1", "base", "1", os.getpid())
    assert rec.layers == [base.diff_id] and rec.starttime > 0
    with pytest.raises(ImageInUse, match=rf"image base:1 is used by running container\(s\) "
                       rf"c1 \(pid {os.getpid()}\): stop them first"):
        store.remove("base", "1")
    du = store.usage()
    assert du.layers[0].containers == ["c1"]
    store.remove_container("c1")
    assert store.remove("base", "1") == [base.diff_id]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@needs_root
def test_stale_container_records_are_removed_by_rm(tmp_path: Path, store: ImageStore) -> None:
    lay, _, _ = two_images(tmp_path / "oci")
    img = store.import_image(read_layout(str(lay.root), "base"), "base", "1")
    me = inuse.start_time(os.getpid())
    for cid, pid, start in (("gone", _dead_pid(), 1), ("reused", os.getpid(), me + 1)):
        inuse.write_record(store.containers_dir, inuse.ContainerRecord(
            cid, img.ref, img.digest, img.layers, pid, start, "2026-01-01T00:00:00+00:00"))
    assert store.containers() == []  # neither is alive: a dead pid, a reused one
    with pytest.raises(ImageError, match=r"container c9 of image base:1: process \d+ is not "
                       "running"):
        store.add_container("c9", "base", "1", _dead_pid())
    store.remove("base", "1")
    assert os.listdir(store.containers_dir) == []


@needs_root
def test_a_running_container_keeps_its_layers_when_its_tag_moves(tmp_path: Path,
                                                                 store: ImageStore) -> None:
    lay, base, _ = two_images(tmp_path / "oci")
    store.import_image(read_layout(str(lay.root), "base"), "img", "1")
    store.add_container("c1", "img", "1", os.getpid())
    other = OCILayout(tmp_path / "other")
    new = layer([file("v2", b"2")])
    other.add_image([new])
    store.import_image(read_layout(str(other.root), None), "img", "1")  # same name:tag
    assert sorted(os.listdir(store.layers_dir)) == sorted([base.diff_id[7:], new.diff_id[7:]])
    by = {u.diff_id: u for u in store.usage().layers}
    assert by[base.diff_id].images == [] and by[base.diff_id].containers == ["c1"]
    store.remove_container("c1")
    store.remove("img", "1")
    assert os.listdir(store.layers_dir) == []


def test_a_bad_digest_is_refused_before_anything_is_unpacked(tmp_path: Path,
                                                             store: ImageStore) -> None:
    lay = OCILayout(tmp_path / "oci")
    m = lay.add_image([layer([file("a", b"x")])])
    blob = lay.blob_path(lay.layer_digests(m)[0])
    data = bytearray(blob.read_bytes())
    data[20] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(BlobError, match=rf"{blob}: blob sha256:\w+: content digest is "
                       "sha256:[0-9a-f]{64}: the blob is corrupt or was changed"):
        read_layout(str(lay.root), None)
    assert not os.path.exists(store.root)


@pytest.mark.parametrize(("size", "problem"), [(-1, "the descriptor says"),
                                               (+1, "the descriptor says")])
def test_a_size_that_differs_is_refused(tmp_path: Path, size: int, problem: str) -> None:
    lay = OCILayout(tmp_path / "oci")
    m = lay.add_image([layer([file("a", b"x")])])
    doc = json.loads(lay.blob_path(m).read_bytes())
    doc["layers"][0]["size"] += size
    data = json.dumps(doc).encode()
    lay.manifests[0] = {"mediaType": MEDIA_MANIFEST, "digest": lay.put_blob(data),
                        "size": len(data)}
    lay.write_index()
    with pytest.raises(BlobError, match=problem):
        read_layout(str(lay.root), None)


def test_a_missing_blob_and_a_missing_layout(tmp_path: Path) -> None:
    lay = OCILayout(tmp_path / "oci")
    m = lay.add_image([layer([file("a")])])
    lay.blob_path(lay.layer_digests(m)[0]).unlink()
    with pytest.raises(BlobError, match="missing: the layout lacks a blob"):
        read_layout(str(lay.root), None)
    with pytest.raises(BadReference, match="no such directory"):
        read_source(str(tmp_path / "nope"), None)
    with pytest.raises(LayoutError, match="not an OCI image layout"):
        read_source(str(tmp_path), "v1")


def test_zstd_layers_are_refused_by_name(tmp_path: Path) -> None:
    lay = OCILayout(tmp_path / "oci")
    tar = make_tar([file("a")])
    lay.add_image([LayerBlob(tar, sha256(tar), TAR_ZSTD)])
    with pytest.raises(LayoutError, match=r"layers\[0\].mediaType: "
                       r"'application/vnd.oci.image.layer.v1.tar\+zstd': zstd"):
        read_layout(str(lay.root), None)


def test_a_nested_index_picks_this_platform(tmp_path: Path, store: ImageStore) -> None:
    lay = OCILayout(tmp_path / "oci")
    lb = plain_layer(make_tar([file("hello", b"hi")]))
    m = lay.add_image([lb])
    entry = lay.manifests.pop()
    from governor.image.oci import host_architecture

    entry["platform"] = {"os": "linux", "architecture": host_architecture()}
    nested = json.dumps({"schemaVersion": 2, "manifests": [entry]}).encode()
    lay.manifests.append({"mediaType": MEDIA_INDEX, "digest": lay.put_blob(nested),
                          "size": len(nested), "annotations": {
                              "org.opencontainers.image.ref.name": "multi"}})
    lay.write_index()
    src = read_layout(str(lay.root), "multi")
    assert src.digest == m and src.ref_tag == "multi"
    rec = store.import_image(src, "multi", "latest")
    assert (Path(store.layer_path(rec.layers[0])) / "hello").read_bytes() == b"hi"


@pytest.mark.parametrize("case", ["truncated-gzip", "symlink-escape", "diff-id-lie", "device"])
def test_hostile_layers_leave_nothing_behind(tmp_path: Path, store: ImageStore,
                                             case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    good = OCILayout(tmp_path / "good")
    good.add_image([layer([file("ok", b"ok")])])
    kept = store.import_image(read_layout(str(good.root), None), "good", "1")
    before = sorted(os.listdir(store.layers_dir))
    lay = OCILayout(tmp_path / "bad")
    if case == "truncated-gzip":
        ok = gz_layer(make_tar([file("big", os.urandom(300_000))]))
        lb = LayerBlob(ok.data[: len(ok.data) - 1000], ok.diff_id)  # digest of what is there
        match = "truncated or corrupt gzip stream"
    elif case == "symlink-escape":
        lb = layer([symlink("link", str(outside)), file("link/evil", b"x")])
        match = "member 'link/evil': its parent link is a symlink"
    elif case == "diff-id-lie":
        real = layer([file("a", b"x")])
        lb = LayerBlob(real.data, sha256(b"something else"))
        match = "uncompresses to sha256:.*but the image config's rootfs.diff_ids says"
    else:
        from tests.unit.oci_writer import device

        lb = layer([file("a", b"x"), device("dev/null")])
        match = "member 'dev/null': a character device"
    lay.add_image([layer([file("first", b"1")]), lb])
    with pytest.raises(UnsafeLayer, match=f"image bad:1: layer sha256:\\w+: .*{match}"):
        store.import_image(read_layout(str(lay.root), None), "bad", "1")
    assert os.listdir(outside) == []
    assert leftovers(store) == []
    # the refused image keeps none of its layers, the first (good) one included; the
    # image stored before is intact
    assert [i.ref for i in store.images()] == ["good:1"]
    assert sorted(os.listdir(store.layers_dir)) == before
    assert (Path(store.layer_path(kept.layers[0])) / "ok").read_bytes() == b"ok"
    store.remove("good", "1")
    assert os.listdir(store.layers_dir) == []


def test_a_directory_imports_as_one_layer(tmp_path: Path, store: ImageStore) -> None:
    src = tmp_path / "rootfs"
    (src / "bin").mkdir(parents=True)
    (src / "bin/app").write_text("#!/bin/sh\n")
    (src / "bin/app").chmod(0o755)
    os.link(src / "bin/app", src / "bin/app2")
    (src / "etc").mkdir()
    (src / "etc/conf").write_text("c")
    (tmp_path / "secret").write_text("s")
    os.symlink(tmp_path / "secret", src / "etc/link")  # stored as a symlink, never read
    rec = store.import_image(read_directory(str(src)), "rootfs", "latest")
    got = Path(store.layer_path(rec.layers[0]))
    assert (got / "bin/app").read_text() == "#!/bin/sh\n"
    assert stat.S_IMODE((got / "bin/app").stat().st_mode) == 0o755
    assert (got / "bin/app").stat().st_ino == (got / "bin/app2").stat().st_ino
    assert os.readlink(got / "etc/link") == str(tmp_path / "secret")
    assert rec.digest.startswith("sha256:") and len(rec.layers) == 1
    again = store.import_image(read_directory(str(src)), "rootfs", "copy")
    assert again.layers == rec.layers  # the same tar: stored once
    assert len(os.listdir(store.layers_dir)) == 1 and leftovers(store) == []


def test_a_directory_with_a_fifo_is_refused(tmp_path: Path, store: ImageStore) -> None:
    src = tmp_path / "rootfs"
    src.mkdir()
    os.mkfifo(src / "pipe")
    with pytest.raises(UnsafeLayer, match="member 'pipe': a fifo"):
        store.import_image(read_directory(str(src)), "rootfs", "latest")
    assert leftovers(store) == [] and os.listdir(store.layers_dir) == []


def test_crash_leftovers_are_cleaned_and_orphans_adopted(tmp_path: Path,
                                                         store: ImageStore) -> None:
    lay = OCILayout(tmp_path / "oci")
    lb = layer([file("a", b"x")])
    lay.add_image([lb])
    store.import_image(read_layout(str(lay.root), None), "x", "1")
    # a crash after the layer's rename, before images.json: the layer is orphaned
    os.unlink(store.meta_path)
    Path(store.tmp_dir, "layer-half").mkdir()  # and one midway through an unpack
    Path(store.tmp_dir, "layer-half", "f").write_text("partial")
    rec = store.import_image(read_layout(str(lay.root), None), "x", "1")
    assert rec.layers == [lb.diff_id] and rec.size > 0
    assert leftovers(store) == []


def test_a_damaged_metadata_file_is_an_error_naming_it(tmp_path: Path,
                                                       store: ImageStore) -> None:
    os.makedirs(store.root)
    Path(store.meta_path).write_text("{not json")
    with pytest.raises(StoreError, match=f"image store {store.meta_path}: not valid JSON"):
        store.images()
    Path(store.meta_path).write_text('{"version": 99}')
    with pytest.raises(StoreError, match="not an image store of version 1"):
        store.images()


def test_a_symlinked_store_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "state" / "images")
    lay = OCILayout(tmp_path / "oci")
    lay.add_image([layer([file("a")])])
    with pytest.raises(StoreError, match=r"not a directory \(a symlink is refused too\)"):
        ImageStore(str(tmp_path / "state")).import_image(
            read_layout(str(lay.root), None), "x", "1")
    assert os.listdir(tmp_path / "elsewhere") == []


def _import(state: str, layout: str, tag: str) -> None:
    ImageStore(state).import_image(read_layout(layout, tag), tag, "1")


@needs_root
def test_two_imports_at_once_leave_a_consistent_store(tmp_path: Path) -> None:
    lay = OCILayout(tmp_path / "oci")
    base = layer([*base_members(), file("big", os.urandom(2 << 20))])
    tags = [f"img{i}" for i in range(4)]
    for i, tag in enumerate(tags):
        lay.add_image([base, layer([file(f"own{i}", b"%d" % i)])], tag=tag)
    state = str(tmp_path / "state")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_import, args=(state, str(lay.root), t)) for t in tags]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = ImageStore(state)
    assert sorted(i.name for i in store.images()) == tags
    assert len(os.listdir(store.layers_dir)) == 5  # the base once, one layer each
    by = {u.diff_id: u for u in store.usage().layers}
    assert len(by[base.diff_id].images) == 4
    meta = json.loads(Path(store.meta_path).read_text())
    assert set(meta["layers"]) == set(by)
    assert leftovers(store) == []


# -- JSON documents: a size cap before anything is read ------------------------------------
def _stored_good_image(tmp_path: Path, store: ImageStore) -> tuple[str, Path]:
    """An image imported before the hostile one: it must stay intact."""
    good = OCILayout(tmp_path / "good")
    good.add_image([layer([file("ok", b"ok")])])
    rec = store.import_image(read_layout(str(good.root), None), "good", "1")
    return rec.ref, Path(store.layer_path(rec.layers[0]))


def _intact(store: ImageStore, ref: str, layer_dir: Path) -> None:
    assert leftovers(store) == []
    assert [i.ref for i in store.images()] == [ref]
    assert os.listdir(store.layers_dir) == [layer_dir.name]
    assert (layer_dir / "ok").read_bytes() == b"ok"


TWO_GIB = 2 << 30


def test_an_enormous_index_json_is_refused_from_its_size(tmp_path: Path,
                                                         store: ImageStore) -> None:
    ref, kept = _stored_good_image(tmp_path, store)
    lay = OCILayout(tmp_path / "huge")
    lay.add_image([layer([file("a")])])
    index = lay.root / "index.json"
    os.truncate(index, TWO_GIB)  # sparse: no gigabytes written, none read
    with pytest.raises(LayoutError, match=rf"{index}: {TWO_GIB} bytes, larger than a JSON "
                       rf"document of the layout may be \({4 << 20} bytes\)"):
        read_layout(str(lay.root), None)
    _intact(store, ref, kept)


@pytest.mark.parametrize("what", ["manifest", "config", "nested-index"])
def test_an_enormous_json_blob_is_refused_before_it_is_read(tmp_path: Path, store: ImageStore,
                                                            what: str) -> None:
    """The descriptor says 2 GiB (and the blob is that large, sparse): refused from the
    descriptor's size, before the blob is hashed or read into memory."""
    ref, kept = _stored_good_image(tmp_path, store)
    lay = OCILayout(tmp_path / "huge")
    m = lay.add_image([layer([file("a")])])
    big = "sha256:" + "c" * 64
    with open(lay.blob_path(big), "wb") as f:
        f.truncate(TWO_GIB)
    if what == "config":
        doc = json.loads(lay.blob_path(m).read_bytes())
        doc["config"]["digest"], doc["config"]["size"] = big, TWO_GIB
        data = json.dumps(doc).encode()
        lay.manifests[0].update(digest=lay.put_blob(data), size=len(data))
    else:
        lay.manifests[0].update(digest=big, size=TWO_GIB)
        if what == "nested-index":
            lay.manifests[0]["mediaType"] = MEDIA_INDEX
    lay.write_index()
    with pytest.raises(BlobError, match=rf"blob {big}: size {TWO_GIB} is more than a JSON "
                       rf"document may be \({4 << 20} bytes\)"):
        read_layout(str(lay.root), None)
    _intact(store, ref, kept)


@pytest.mark.parametrize("where", ["index.json", "blob"])
def test_a_fifo_in_the_layout_is_refused_not_waited_on(tmp_path: Path, where: str) -> None:
    import signal

    lay = OCILayout(tmp_path / "fifo")
    m = lay.add_image([layer([file("a")])])
    path = lay.root / "index.json" if where == "index.json" else lay.blob_path(m)
    path.unlink()
    os.mkfifo(path)

    def hung(_sig: int, _frame: object) -> None:
        raise AssertionError(f"opening the fifo {path} blocked")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        with pytest.raises((LayoutError, BlobError), match=f"{path}: .*not a regular file"):
            read_layout(str(lay.root), None)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# -- limits: a layer past one is refused, and the store stays as it was --------------------
MiB = 1 << 20
SIZE_LIMIT = ('the limit is images.max_layer_size = "1M"; to import it, raise max_layer_size '
              "in the [images] section of the configuration")


def _hostile_layout(root: Path, hostile: LayerBlob) -> tuple[OCILayout, list[str]]:
    """A good first layer, then the hostile one: the first is unpacked, then deleted."""
    lay = OCILayout(root)
    m = lay.add_image([layer([file("first", b"1")]), hostile])
    return lay, lay.layer_digests(m)


LIMIT_CASES: list[tuple[str, LayerBlob, ImportLimits, str]] = [
    ("gzip-bomb", gz_layer(make_tar([file("zeros", bytes(4 * MiB))])),
     ImportLimits(max_layer_size=MiB, min_free_space=0),
     "member 'zeros': 4194304 bytes, which would take the layer's files past 1048576 "
     f"bytes: {SIZE_LIMIT}"),
    ("zeros-after-the-end", gz_layer(make_tar([file("a", b"x")]) + bytes(4 * MiB)),
     ImportLimits(max_layer_size=MiB, min_free_space=0),
     f"uncompresses to more than 1048576 bytes: {SIZE_LIMIT}"),
    ("too-many-entries", layer([file(f"f{i}") for i in range(200)]),
     ImportLimits(max_layer_entries=100, min_free_space=0),
     "member 'f100': more than 100 entries: the limit is images.max_layer_entries = 100; to "
     "import it, raise max_layer_entries in the [images] section of the configuration"),
]


@pytest.mark.parametrize(("hostile", "limits", "why"), [c[1:] for c in LIMIT_CASES],
                         ids=[c[0] for c in LIMIT_CASES])
def test_a_layer_past_a_limit_leaves_the_store_as_it_was(
        tmp_path: Path, store: ImageStore, hostile: LayerBlob, limits: ImportLimits,
        why: str) -> None:
    ref, kept = _stored_good_image(tmp_path, store)
    lay, digests = _hostile_layout(tmp_path / "bomb", hostile)
    limited = ImageStore(str(tmp_path / "state"), limits=limits)
    with pytest.raises(LayerLimit) as e:
        limited.import_image(read_layout(str(lay.root), None), "bomb", "1")
    assert str(e.value) == f"image bomb:1: layer {digests[1]}: {why}"
    assert e.value.exit_code == 1
    _intact(store, ref, kept)
    assert [i.ref for i in limited.images()] == [ref]


def test_a_directory_past_the_limit_is_refused_while_it_is_archived(
        tmp_path: Path, store: ImageStore) -> None:
    ref, kept = _stored_good_image(tmp_path, store)
    src = tmp_path / "rootfs"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.truncate(4 * MiB)  # a hole: archived (and unpacked) as 4 MiB of zeros
    limited = ImageStore(str(tmp_path / "state"),
                         limits=ImportLimits(max_layer_size=MiB, min_free_space=0))
    with pytest.raises(LayerLimit) as e:
        limited.import_image(read_directory(str(src)), "rootfs", "1")
    assert str(e.value) == (f"image rootfs:1: layer dir:{src}: the directory archives to "
                            f"more than 1048576 bytes: {SIZE_LIMIT}")
    _intact(store, ref, kept)


class FakeFree:
    """The free space the store sees (the seam governor.image.limits.free_space)."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.paths: list[str] = []

    def __call__(self, path: str) -> int:
        self.paths.append(path)
        return self.free


def test_too_little_free_space_refuses_a_layer_before_it_is_unpacked(
        tmp_path: Path, store: ImageStore) -> None:
    ref, kept = _stored_good_image(tmp_path, store)
    lay, digests = _hostile_layout(tmp_path / "img", layer([file("a", b"x")]))
    size = lay.blob_path(digests[0]).stat().st_size
    free = FakeFree(20 * MiB)
    limited = ImageStore(str(tmp_path / "state"), limits=ImportLimits(min_free_space=20 * MiB),
                         free_space=free)
    with pytest.raises(LowSpace) as e:
        limited.import_image(read_layout(str(lay.root), None), "img", "1")
    assert str(e.value) == (
        f"image store {limited.tmp_dir}: image img:1: layer {digests[0]}: 20971520 bytes "
        f"are free on its filesystem and the layer takes at least its compressed size, "
        f"{size} bytes: {20 * MiB - size} would be left, less than images.min_free_space = "
        '"20M" keeps free: free some space (governor image df, governor image rm) or lower '
        "min_free_space in the [images] section of the configuration")
    assert e.value.exit_code == 2
    assert free.paths == [limited.tmp_dir]
    _intact(store, ref, kept)


def test_too_little_free_space_refuses_a_layer_while_it_is_unpacked(
        tmp_path: Path, store: ImageStore) -> None:
    ref, kept = _stored_good_image(tmp_path, store)
    lay, digests = _hostile_layout(tmp_path / "img", layer([file("big", bytes(16 * MiB))]))
    limited = ImageStore(str(tmp_path / "state"), limits=ImportLimits(min_free_space=90 * MiB),
                         free_space=FakeFree(100 * MiB))
    with pytest.raises(LowSpace, match=rf"image img:1: layer {digests[1]}: member 'big': "
                       r"104857600 bytes are free on its filesystem and it needs 16777216 "
                       r"bytes: 88080384 would be left, less than images.min_free_space"):
        limited.import_image(read_layout(str(lay.root), None), "img", "1")
    _intact(store, ref, kept)


# -- a layer deeper than Python's recursion limit ------------------------------------------
DEEP = "/".join(["d"] * 1500)  # one member, 3 KiB of name: 1,500 directories


def test_a_deep_hostile_layer_is_removed_from_tmp(tmp_path: Path, store: ImageStore) -> None:
    """shutil.rmtree recursed per level: RecursionError, the layer left in images/tmp/,
    and every later import's clean-up failing the same way."""
    from tests.unit.oci_writer import device

    ref, kept = _stored_good_image(tmp_path, store)
    lay, _ = _hostile_layout(tmp_path / "deep", layer([file(f"{DEEP}/f", b"x"),
                                                       device("dev/null")]))
    with pytest.raises(UnsafeLayer, match="member 'dev/null': a character device"):
        store.import_image(read_layout(str(lay.root), None), "deep", "1")
    _intact(store, ref, kept)


def test_a_deep_layer_is_imported_and_removed(tmp_path: Path, store: ImageStore) -> None:
    lay = OCILayout(tmp_path / "deep")
    lay.add_image([layer([file(f"{DEEP}/f", b"x")])])
    rec = store.import_image(read_layout(str(lay.root), None), "deep", "1")
    assert (Path(store.layer_path(rec.layers[0])) / DEEP / "f").read_bytes() == b"x"
    assert store.remove("deep", "1") == rec.layers
    assert os.listdir(store.layers_dir) == [] and leftovers(store) == []


def test_remove_all_never_follows_a_symlink(tmp_path: Path) -> None:
    from governor.image.fsutil import remove_all

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("k")
    top = tmp_path / "top"
    deep = top / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "f").write_text("f")
    (top / "a" / "g").write_text("g")
    (top / "a" / "c").mkdir()
    os.symlink(outside, deep / "link")
    os.symlink(outside, top / "a" / "dirlink")
    remove_all(str(top))
    assert not top.exists() and (outside / "keep").read_text() == "k"
    os.symlink(outside, tmp_path / "alone")
    remove_all(str(tmp_path / "alone"))  # a symlink itself: unlinked, its target kept
    remove_all(str(tmp_path / "missing"))
    assert os.listdir(outside) == ["keep"]
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        (tmp_path / "rel" / "x").mkdir(parents=True)
        remove_all("rel", dir_fd=fd)
    finally:
        os.close(fd)
    assert sorted(os.listdir(tmp_path)) == ["outside"]


def test_a_directory_nested_too_deeply_to_archive_is_a_layout_error(
        tmp_path: Path, store: ImageStore) -> None:
    src = tmp_path / "rootfs"
    src.mkdir()
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(1200):  # deeper than the recursion limit, one level at a time
        os.mkdir("d", dir_fd=fd)
        down = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = down
    os.close(fd)
    try:
        with pytest.raises(LayoutError, match=r"rootfs.*: (directories nested too deeply to "
                           r"archive|cannot be archived: \[EMFILE\])"):
            store.import_image(read_directory(str(src)), "rootfs", "1")
        assert leftovers(store) == [] and store.images() == []
    finally:  # pytest's clean-up of old tmp_paths uses shutil.rmtree, which recurses
        from governor.image.fsutil import remove_all

        remove_all(str(src))
