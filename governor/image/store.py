"""The content-addressed image store under ``<state_dir>/images/``::

    images.json          name:tag -> manifest digest, config, layer list; layer sizes
    lock                 flock'd by every change (import, rm, a container record)
    layers/<hex>/        one unpacked layer, named by its diff-id (sha256 of the tar)
    containers/ID.json   a running container's use of an image (governor.image.inuse)
    tmp/                 layers being unpacked, trees being removed

A layer is unpacked into ``tmp/``, synced, then renamed to ``layers/<hex>``: a crash never
leaves a half layer under its real name.  ``images.json`` is rewritten atomically under the
lock, after the layers it names are in place; a layer no image and no running container
uses is deleted at the next ``rm`` or import.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from governor.image import inuse
from governor.image.errors import (
    ImageError,
    ImageInUse,
    ImageNotFound,
    StoreError,
    UnsafeLayer,
    describe_os_error,
)
from governor.image.fsutil import (
    disk_usage,
    ensure_dir,
    fsync_dir,
    locked,
    read_json,
    remove_all,
    remove_tree,
    syncfs,
    write_json,
)
from governor.image.limits import ImportLimits, LayerBudget, free_space
from governor.image.source import LayerSource, SourceImage
from governor.image.unpack import unpack_layer
from governor.placement.procfs import ProcessGone

STORE_VERSION = 1


@dataclass(frozen=True)
class ImageRecord:
    name: str
    tag: str
    digest: str                 # manifest digest (a directory: digest of its metadata)
    source: str
    imported: str               # ISO 8601 UTC
    config: dict[str, Any]      # Env, WorkingDir, Entrypoint, Cmd, User
    layers: list[str]           # diff-ids, base first
    architecture: str
    size: int = 0               # bytes its layers take (shared ones counted in full)

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.tag}"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "tag": self.tag, "digest": self.digest,
                "source": self.source, "imported": self.imported, "config": self.config,
                "layers": self.layers, "architecture": self.architecture, "size": self.size}


@dataclass(frozen=True)
class LayerUsage:
    diff_id: str
    size: int
    images: list[str]
    containers: list[str]


@dataclass(frozen=True)
class DiskUsage:
    layers: list[LayerUsage]
    total: int      # bytes the store's layers take
    saved: int      # bytes a copy of each layer per image would take beyond that

    def as_dict(self) -> dict[str, Any]:
        return {"layers": [vars(u) for u in self.layers], "total": self.total,
                "saved": self.saved}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class ImageStore:
    """The store under ``<state_dir>/images``.  ``limits`` bound what importing one layer
    may take (the configuration's ``[images]``); ``free_space`` measures a filesystem's
    free bytes (:func:`governor.image.limits.free_space`; tests pass their own)."""

    def __init__(self, state_dir: str, *, proc_root: str = "/proc",
                 limits: ImportLimits | None = None,
                 free_space: Callable[[str], int] = free_space) -> None:
        self.root = os.path.join(os.path.abspath(state_dir), "images")
        self.proc_root = proc_root
        self.limits = limits if limits is not None else ImportLimits()
        self.free_space = free_space
        self.meta_path = os.path.join(self.root, "images.json")
        self.layers_dir = os.path.join(self.root, "layers")
        self.containers_dir = os.path.join(self.root, "containers")
        self.tmp_dir = os.path.join(self.root, "tmp")

    def layer_path(self, diff_id: str) -> str:
        return os.path.join(self.layers_dir, diff_id.split(":", 1)[1])

    # -- metadata ---------------------------------------------------------------------------
    def _setup(self) -> None:
        for d in (self.root, self.layers_dir, self.containers_dir, self.tmp_dir):
            ensure_dir(d)

    def _load(self) -> dict[str, Any]:
        doc = read_json(self.meta_path)
        if doc is None:
            return {"version": STORE_VERSION, "images": {}, "layers": {}}
        if not isinstance(doc, dict) or doc.get("version") != STORE_VERSION or \
                not isinstance(doc.get("images"), dict) or not isinstance(doc.get("layers"), dict):
            raise StoreError(self.meta_path, f"not an image store of version {STORE_VERSION} "
                             "(keys version, images, layers); restore it or remove the store")
        return doc

    def _record(self, meta: dict[str, Any], ref: str) -> ImageRecord:
        d = meta["images"][ref]
        try:
            size = sum(int(meta["layers"][x]["size"]) for x in d["layers"])
            return ImageRecord(d["name"], d["tag"], d["digest"], d["source"], d["imported"],
                               d["config"], list(d["layers"]), d["architecture"], size)
        except (KeyError, TypeError, ValueError) as e:
            raise StoreError(self.meta_path, f"image {ref!r}: malformed entry ({e!r}); "
                             "restore the file or remove the store") from e

    def images(self) -> list[ImageRecord]:
        meta = self._load()
        return [self._record(meta, ref) for ref in sorted(meta["images"])]

    def get(self, name: str, tag: str) -> ImageRecord:
        meta = self._load()
        ref = f"{name}:{tag}"
        if ref not in meta["images"]:
            raise ImageNotFound(ref, list(meta["images"]))
        return self._record(meta, ref)

    # -- import -----------------------------------------------------------------------------
    def import_image(self, src: SourceImage, name: str, tag: str) -> ImageRecord:
        """Unpack ``src``'s layers not stored yet and record it as ``name:tag`` (replacing
        an image of that name; its layers go when nothing else uses them)."""
        ref = f"{name}:{tag}"
        self._setup()
        with locked(os.path.join(self.root, "lock")):
            meta = self._load()
            self._clean_tmp()
            try:
                diff_ids = [self._layer(meta, layer, ref) for layer in src.layers]
            except BaseException:
                # a refused image keeps none of its layers (those of other images stay)
                with contextlib.suppress(Exception):
                    self._collect(self._load())
                raise
            digest = src.digest or "sha256:" + hashlib.sha256(json.dumps(
                {"config": src.config.as_dict(), "layers": diff_ids},
                sort_keys=True).encode()).hexdigest()
            meta["images"][ref] = {
                "name": name, "tag": tag, "digest": digest,
                "source": os.path.abspath(src.path), "imported": _now(),
                "config": src.config.as_dict(), "layers": diff_ids,
                "architecture": src.config.architecture}
            write_json(self.meta_path, meta)
            self._collect(meta)
            return self._record(meta, ref)

    def _layer(self, meta: dict[str, Any], layer: LayerSource, ref: str) -> str:
        known = layer.diff_id
        if known is not None and os.path.isdir(self.layer_path(known)):
            if known not in meta["layers"]:  # renamed in place, then a crash: adopt it
                meta["layers"][known] = {"size": disk_usage(self.layer_path(known)),
                                         "blob": layer.digest, "unpacked": _now()}
            return known
        budget = LayerBudget(self.limits, image=ref, layer=layer.digest, where=self.tmp_dir,
                             free=self.free_space)
        budget.start(layer.size)
        tmp = tempfile.mkdtemp(prefix="layer-", dir=self.tmp_dir)
        try:
            os.chmod(tmp, 0o755)  # noqa: S103 (a layer's root: every container reads it)
            try:
                with layer.open(self.tmp_dir, budget) as blob:
                    got = unpack_layer(blob, tmp, compression=layer.compression, image=ref,
                                       layer=layer.digest, budget=budget)
            except OSError as e:
                raise StoreError(tmp, f"unpacking layer {layer.digest} of {ref}: "
                                 f"{describe_os_error(e)}", err=e.errno) from e
            if known is not None and got.diff_id != known:
                raise UnsafeLayer(ref, layer.digest, None, f"uncompresses to {got.diff_id}, "
                                  f"but the image config's rootfs.diff_ids says {known}")
            final = self.layer_path(got.diff_id)
            if os.path.isdir(final):  # the same tar reached through another blob
                remove_all(tmp)
            else:
                try:
                    syncfs(tmp)
                    os.rename(tmp, final)
                    fsync_dir(self.layers_dir)
                except OSError as e:
                    raise StoreError(final, f"layer {layer.digest} of {ref} cannot be put in "
                                     f"place: {describe_os_error(e)}", err=e.errno) from e
        except BaseException:
            with contextlib.suppress(OSError):  # else the next import's clean-up removes it
                remove_all(tmp)
            raise
        meta["layers"].setdefault(got.diff_id, {"size": got.size, "blob": layer.digest,
                                                "unpacked": _now()})
        return got.diff_id

    def _clean_tmp(self) -> None:
        """Leftovers of a crashed import or removal (only ever touched under the lock)."""
        for name in os.listdir(self.tmp_dir):
            with contextlib.suppress(OSError):
                remove_all(os.path.join(self.tmp_dir, name))

    def _collect(self, meta: dict[str, Any]) -> list[str]:
        """Forget and delete the layers no image and no live container uses (and layer
        directories the metadata does not know)."""
        used = {d for img in meta["images"].values() for d in img["layers"]}
        for _, rec in self._containers(prune=False):
            used.update(rec.layers)
        gone = sorted(d for d in meta["layers"] if d not in used)
        if gone:
            for d in gone:
                del meta["layers"][d]
            write_json(self.meta_path, meta)
        for name in os.listdir(self.layers_dir):
            if f"sha256:{name}" not in used:
                remove_tree(os.path.join(self.layers_dir, name), trash=self.tmp_dir)
        return gone

    # -- containers ----------------------------------------------------------------------
    def _containers(self, *, prune: bool) -> list[tuple[str, inuse.ContainerRecord]]:
        """Live container records; with ``prune`` stale ones are removed."""
        live = []
        for path, rec in inuse.read_records(self.containers_dir):
            if inuse.is_alive(rec, self.proc_root):
                live.append((path, rec))
            elif prune:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    raise StoreError(path, f"stale container record cannot be removed: "
                                     f"{describe_os_error(e)}", err=e.errno) from e
        return live

    def containers(self) -> list[inuse.ContainerRecord]:
        return [rec for _, rec in self._containers(prune=False)]

    def add_container(self, cid: str, name: str, tag: str, pid: int) -> inuse.ContainerRecord:
        """Record that container ``cid`` (process ``pid``) runs image ``name:tag``: from
        now on ``rm`` refuses the image and its layers are kept."""
        self._setup()
        with locked(os.path.join(self.root, "lock")):
            img = self.get(name, tag)
            try:
                started = inuse.start_time(pid, self.proc_root)
            except ProcessGone:
                raise ImageError(f"container {cid} of image {img.ref}: process {pid} is not "
                                 "running, so there is nothing to record") from None
            rec = inuse.ContainerRecord(cid, img.ref, img.digest, img.layers, pid, started,
                                        _now())
            inuse.write_record(self.containers_dir, rec)
            return rec

    def remove_container(self, cid: str) -> None:
        path = inuse.record_path(self.containers_dir, cid)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StoreError(path, f"cannot be removed: {describe_os_error(e)}", err=e.errno
                             ) from e

    # -- rm, df ------------------------------------------------------------------------------
    def remove(self, name: str, tag: str) -> list[str]:
        """Remove image ``name:tag``; the layers nothing else uses go with it (returned).
        An image that is not there is :class:`ImageNotFound` (exit 2, like an unknown
        tenant), also when there is no store yet: none is created for it."""
        ref = f"{name}:{tag}"
        if not os.path.isfile(self.meta_path):
            raise ImageNotFound(ref, [])
        self._setup()
        with locked(os.path.join(self.root, "lock")):
            meta = self._load()
            if ref not in meta["images"]:
                raise ImageNotFound(ref, list(meta["images"]))
            users = sorted(f"{r.id} (pid {r.pid})" for _, r in self._containers(prune=True)
                           if r.image == ref)
            if users:
                raise ImageInUse(ref, users)
            del meta["images"][ref]
            write_json(self.meta_path, meta)
            self._clean_tmp()
            return self._collect(meta)

    def usage(self) -> DiskUsage:
        meta = self._load()
        images: dict[str, list[str]] = {d: [] for d in meta["layers"]}
        for ref in sorted(meta["images"]):
            for d in meta["images"][ref]["layers"]:
                images.setdefault(d, []).append(ref)
        conts: dict[str, list[str]] = {d: [] for d in images}
        for rec in self.containers():
            for d in dict.fromkeys(rec.layers):
                conts.setdefault(d, []).append(rec.id)
        rows = [LayerUsage(d, int(meta["layers"].get(d, {}).get("size", 0)),
                           sorted(set(images.get(d, []))), conts.get(d, []))
                for d in sorted(set(images) | set(conts))]
        total = sum(r.size for r in rows)
        saved = sum(r.size * (len(r.images) - 1) for r in rows if len(r.images) > 1)
        return DiskUsage(rows, total, saved)
