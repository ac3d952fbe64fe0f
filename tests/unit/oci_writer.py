"""A tiny OCI image layout writer for the tests: tar layers made with ``tarfile``, gzipped,
sha256-named blobs, ``index.json``, manifests and configs as the image spec describes them
(and as ``umoci`` writes them).  Hostile layouts are made by handing it hostile tars, lying
descriptors or blobs changed after the fact."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from governor.image.oci import MEDIA_CONFIG, MEDIA_INDEX, MEDIA_MANIFEST, REF_NAME

TAR = "application/vnd.oci.image.layer.v1.tar"
TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

Member = tuple[tarfile.TarInfo, bytes | None]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _info(name: str, kind: bytes, *, mode: int, uid: int = 0, gid: int = 0,
          mtime: int = 1_700_000_000) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = kind, mode, uid, gid, mtime
    return ti


def file(name: str, data: bytes = b"", *, mode: int = 0o644, uid: int = 0, gid: int = 0,
         xattrs: dict[str, bytes] | None = None) -> Member:
    ti = _info(name, tarfile.REGTYPE, mode=mode, uid=uid, gid=gid)
    ti.size = len(data)
    for k, v in (xattrs or {}).items():
        ti.pax_headers[f"SCHILY.xattr.{k}"] = v.decode("utf-8", "surrogateescape")
    return ti, data


def directory(name: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Member:
    return _info(name, tarfile.DIRTYPE, mode=mode, uid=uid, gid=gid), None


def symlink(name: str, target: str) -> Member:
    ti = _info(name, tarfile.SYMTYPE, mode=0o777)
    ti.linkname = target
    return ti, None


def hardlink(name: str, target: str) -> Member:
    ti = _info(name, tarfile.LNKTYPE, mode=0o644)
    ti.linkname = target
    return ti, None


def device(name: str, kind: bytes = tarfile.CHRTYPE, major: int = 1, minor: int = 3
           ) -> Member:
    ti = _info(name, kind, mode=0o666)
    ti.devmajor, ti.devminor = major, minor
    return ti, None


def sparse_file(name: str, realsize: int, tail: bytes = b"end") -> Member:
    """A pax (GNU format 1.0) sparse file of ``realsize`` bytes, all a hole but ``tail`` at
    its end: a few hundred bytes in the archive, ``realsize`` once unpacked."""
    sparse_map = f"1\n{realsize - len(tail)}\n{len(tail)}\n".encode()
    data = sparse_map.ljust(512, b"\0") + tail
    ti = _info(f"GNUSparseFile.0/{name}", tarfile.REGTYPE, mode=0o644)
    ti.size = len(data)
    ti.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                      "GNU.sparse.name": name, "GNU.sparse.realsize": str(realsize)}
    return ti, data


def make_tar(members: list[Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


@dataclass(frozen=True)
class LayerBlob:
    data: bytes          # the blob as stored (compressed or not)
    diff_id: str         # what the config says it uncompresses to
    media_type: str = TAR_GZIP


def gz_layer(tar: bytes) -> LayerBlob:
    return LayerBlob(gzip.compress(tar, mtime=0), sha256(tar))


def plain_layer(tar: bytes) -> LayerBlob:
    return LayerBlob(tar, sha256(tar), TAR)


def layer(members: list[Member]) -> LayerBlob:
    return gz_layer(make_tar(members))


@dataclass
class OCILayout:
    root: Path
    manifests: list[dict[str, object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self.write_index()

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest.split(":", 1)[1]

    def put_blob(self, data: bytes) -> str:
        d = sha256(data)
        self.blob_path(d).write_bytes(data)
        return d

    def write_index(self) -> None:
        (self.root / "index.json").write_text(json.dumps(
            {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": self.manifests}))

    def add_image(self, layers: list[LayerBlob], *, tag: str | None = None,
                  env: list[str] | None = None, cmd: list[str] | None = None,
                  entrypoint: list[str] | None = None, workdir: str = "/",
                  user: str = "") -> str:
        """Write the layers, a config and a manifest; list it in index.json (tagged by
        the ref.name annotation when ``tag``).  Returns the manifest's digest."""
        descs = [{"mediaType": lb.media_type, "digest": self.put_blob(lb.data),
                  "size": len(lb.data)} for lb in layers]
        config = {"architecture": "amd64", "os": "linux",
                  "config": {"Env": env or ["PATH=/usr/bin:/bin"], "Cmd": cmd,
                             "Entrypoint": entrypoint, "WorkingDir": workdir, "User": user},
                  "rootfs": {"type": "layers", "diff_ids": [lb.diff_id for lb in layers]}}
        cdata = json.dumps(config).encode()
        manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                    "config": {"mediaType": MEDIA_CONFIG, "digest": self.put_blob(cdata),
                               "size": len(cdata)},
                    "layers": descs}
        mdata = json.dumps(manifest).encode()
        digest = self.put_blob(mdata)
        entry: dict[str, object] = {"mediaType": MEDIA_MANIFEST, "digest": digest,
                                    "size": len(mdata)}
        if tag is not None:
            entry["annotations"] = {REF_NAME: tag}
        self.manifests.append(entry)
        self.write_index()
        return digest

    def layer_digests(self, manifest_digest: str) -> list[str]:
        doc = json.loads(self.blob_path(manifest_digest).read_bytes())
        return [d["digest"] for d in doc["layers"]]


# -- the two layers the issue describes ---------------------------------------------------
def base_members() -> list[Member]:
    return [
        directory("etc"),
        file("etc/hostname", b"base\n"),
        file("etc/motd", b"welcome\n"),
        directory("usr"), directory("usr/bin"),
        file("usr/bin/tool", b"#!/bin/sh\necho tool\n", mode=0o4755, uid=0, gid=0),
        file("usr/bin/owned", b"x", mode=0o640, uid=1234, gid=5678),
        symlink("usr/bin/sh", "/bin/busybox"),
        hardlink("usr/bin/tool2", "usr/bin/tool"),
        directory("data"), file("data/old1", b"1"), file("data/old2", b"2"),
        directory("var", mode=0o700), directory("var/empty"),
    ]


def upper_members() -> list[Member]:
    return [
        file("etc/.wh.motd"),                       # delete a file
        directory("data"), file("data/.wh..wh..opq"),  # replace a directory opaquely
        file("data/new", b"new data\n"),
        file("etc/added", b"added\n"),              # add a file
    ]
