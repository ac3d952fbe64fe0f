"""OCI image layout documents, parsed and checked: pure functions over bytes, no file I/O.

The formats are those of the OCI image spec v1.0/v1.1 (``image-layout.md``,
``image-index.md``, ``manifest.md``, ``config.md``, ``descriptor.md``), which ``umoci`` and
``skopeo copy ... oci:DIR:TAG`` write.  Each problem is a :class:`LayoutError` naming the
file, the JSON key and the value found.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from governor.image.errors import BadReference, LayoutError

#: the only digest algorithm accepted (descriptor.md registers sha256 and sha512; every
#: producer writes sha256, and one algorithm keeps the store's names unambiguous)
ALGORITHM = "sha256"
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_ANY_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
INDEX_TYPES = (MEDIA_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (MEDIA_MANIFEST, DOCKER_MANIFEST)
CONFIG_TYPES = (MEDIA_CONFIG, DOCKER_CONFIG)

Compression = Literal["none", "gzip"]
#: layer media types -> how the blob is compressed (the nondistributable types are
#: deprecated in image-spec 1.1 but still read; their format is the same)
LAYER_TYPES: dict[str, Compression] = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
}
#: known layer types governor cannot read: Python 3.11's standard library has no zstd
#: (compression.zstd arrives in 3.14)
UNREADABLE_LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar+zstd":
        "zstd-compressed layers need a zstd decoder, which Python 3.11's standard library "
        "lacks; recompress the image with gzip (skopeo copy --dest-compress-format gzip, "
        "or umoci repack)",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd":
        "zstd-compressed layers are not supported (see tar+zstd)",
}

REF_NAME = "org.opencontainers.image.ref.name"
#: the largest index, manifest or config read into memory (real ones are a few KiB), as
#: containerd's registry resolver caps manifests (``remotes/docker``: ``MaxManifestSize``,
#: about 4 MiB).  A larger one is refused from its size, before a byte of it is read.
MAX_JSON = 4 << 20

# distribution-spec's grammar for repository names and tags
NAME_RE = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
                     r"(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
DEFAULT_TAG = "latest"

#: Python's machine names -> the GOARCH names platform.architecture uses
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
           "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def host_architecture() -> str:
    m = os.uname().machine
    return _GOARCH.get(m, m)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: tuple[str, str] | None = None  # (os, architecture)

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]


@dataclass(frozen=True)
class Manifest:
    config: Descriptor
    layers: list[Descriptor]


@dataclass(frozen=True)
class ImageConfig:
    """What later work runs the image with (config.md's ``config`` object) and the
    uncompressed digests of its layers, base first."""

    env: list[str]
    working_dir: str
    entrypoint: list[str] | None
    cmd: list[str] | None
    user: str
    diff_ids: list[str]
    os: str = "linux"
    architecture: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"Env": self.env, "WorkingDir": self.working_dir,
                "Entrypoint": self.entrypoint, "Cmd": self.cmd, "User": self.user}


def load_json(data: bytes, path: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except RecursionError as e:  # "[[[[...": 4 MiB of brackets outnest the parser's stack
        raise LayoutError(path, "not valid JSON: nested too deeply") from e
    except ValueError as e:
        # JSONDecodeError and UnicodeDecodeError, and the plain ValueError of an integer
        # longer than sys.get_int_max_str_digits() (4300 digits)
        raise LayoutError(path, f"not valid JSON ({str(e)[:200]})") from e
    if not isinstance(doc, dict):
        raise LayoutError(path, f"a JSON object is needed, found {type(doc).__name__}")
    return doc


def _get(doc: dict[str, Any], key: str, typ: type | tuple[type, ...], path: str,
         prefix: str, *, required: bool = True) -> Any:
    if key not in doc or doc[key] is None:
        if required:
            raise LayoutError(path, "missing", key=f"{prefix}{key}")
        return None
    v = doc[key]
    if not isinstance(v, typ) or (isinstance(v, bool) and typ is int):
        raise LayoutError(path, f"of the wrong type ({type(v).__name__})",
                          key=f"{prefix}{key}", value=v)
    return v


def check_digest(value: object, *, path: str, key: str) -> str:
    """A ``sha256:<64 lowercase hex>`` digest, or a LayoutError saying what is wrong."""
    if not isinstance(value, str):
        raise LayoutError(path, "a digest string is needed", key=key, value=value)
    if DIGEST_RE.fullmatch(value):
        return value
    algo = value.split(":", 1)[0] if ":" in value else None
    if algo and algo != ALGORITHM and _ANY_DIGEST_RE.fullmatch(value):
        raise LayoutError(path, f"digest algorithm {algo!r} is not supported: governor "
                          "verifies sha256 digests only", key=key, value=value)
    raise LayoutError(path, "not a digest: use sha256:<64 lowercase hex digits>",
                      key=key, value=value)


def parse_descriptor(d: object, path: str, key: str) -> Descriptor:
    if not isinstance(d, dict):
        raise LayoutError(path, "a descriptor object is needed", key=key, value=d)
    p = f"{key}."
    media = _get(d, "mediaType", str, path, p)
    digest = check_digest(d.get("digest"), path=path, key=f"{p}digest")
    size = _get(d, "size", int, path, p)
    if size < 0:
        raise LayoutError(path, "a size must not be negative", key=f"{p}size", value=size)
    ann = _get(d, "annotations", dict, path, p, required=False) or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in ann.items()):
        raise LayoutError(path, "annotations map strings to strings", key=f"{p}annotations")
    plat = _get(d, "platform", dict, path, p, required=False)
    platform = None
    if plat is not None:
        platform = (str(plat.get("os", "")), str(plat.get("architecture", "")))
    return Descriptor(media, digest, size, dict(ann), platform)


def check_layout_marker(data: bytes, path: str) -> None:
    """The ``oci-layout`` file: ``{"imageLayoutVersion": "1.0.0"}``."""
    doc = load_json(data, path)
    version = doc.get("imageLayoutVersion")
    if not isinstance(version, str) or not version.startswith("1."):
        raise LayoutError(path, "unsupported image layout version: governor reads 1.x",
                          key="imageLayoutVersion", value=version)


def parse_index(data: bytes, path: str) -> list[Descriptor]:
    """The descriptors listed in an index (``index.json`` or a nested index blob)."""
    doc = load_json(data, path)
    version = doc.get("schemaVersion")
    if version != 2:
        raise LayoutError(path, "schemaVersion must be 2", key="schemaVersion", value=version)
    manifests = _get(doc, "manifests", list, path, "")
    return [parse_descriptor(m, path, f"manifests[{i}]") for i, m in enumerate(manifests)]


def ref_tag(desc: Descriptor) -> str | None:
    """The tag a descriptor's ``org.opencontainers.image.ref.name`` gives: the whole
    value (``v1``), or the tag of a full reference (``example.com/app:v1`` -> ``v1``)."""
    ref = desc.annotations.get(REF_NAME)
    if ref is None:
        return None
    tail = ref.rsplit("/", 1)[-1]
    return tail.rsplit(":", 1)[1] if ":" in tail and "/" in ref else ref


def select_manifest(descs: list[Descriptor], tag: str | None, path: str) -> Descriptor:
    """The descriptor that ``tag`` names (by its ref.name annotation), or the only one."""
    tags = [t for t in (ref_tag(d) for d in descs) if t is not None]
    if tag is not None:
        hits = [d for d in descs if ref_tag(d) == tag or d.annotations.get(REF_NAME) == tag]
        if not hits:
            raise LayoutError(path, f"no manifest is tagged {tag!r} (tags: "
                              f"{', '.join(sorted(tags)) or 'none'})", key=f"manifests[{REF_NAME}]")
        return hits[0]
    if len(descs) == 1:
        return descs[0]
    if not descs:
        raise LayoutError(path, "the index lists no manifest", key="manifests")
    raise LayoutError(path, f"the index lists {len(descs)} manifests: name one as PATH:TAG "
                      f"(tags: {', '.join(sorted(tags)) or 'none'})", key="manifests")


def select_platform(descs: list[Descriptor], path: str) -> Descriptor:
    """In a nested (multi-platform) index, the manifest for linux on this machine."""
    want = ("linux", host_architecture())
    for d in descs:
        if d.platform == want and d.media_type in MANIFEST_TYPES:
            return d
    have = sorted({"/".join(d.platform) for d in descs if d.platform})
    raise LayoutError(path, f"no manifest for platform {'/'.join(want)} "
                      f"(platforms: {', '.join(have) or 'none given'})", key="manifests")


def parse_manifest(data: bytes, path: str) -> Manifest:
    doc = load_json(data, path)
    version = doc.get("schemaVersion")
    if version != 2:
        raise LayoutError(path, "schemaVersion must be 2", key="schemaVersion", value=version)
    media = doc.get("mediaType")
    if media is not None and media not in MANIFEST_TYPES:
        raise LayoutError(path, f"not an image manifest (expected {MEDIA_MANIFEST})",
                          key="mediaType", value=media)
    config = parse_descriptor(doc.get("config"), path, "config")
    if config.media_type not in CONFIG_TYPES:
        raise LayoutError(path, f"unsupported config type (expected {MEDIA_CONFIG})",
                          key="config.mediaType", value=config.media_type)
    layers = [parse_descriptor(d, path, f"layers[{i}]")
              for i, d in enumerate(_get(doc, "layers", list, path, ""))]
    for i, layer in enumerate(layers):
        layer_compression(layer.media_type, path=path, key=f"layers[{i}].mediaType")
    return Manifest(config, layers)


def layer_compression(media_type: str, *, path: str, key: str) -> Compression:
    """How a layer of ``media_type`` is compressed, or a LayoutError that says why governor
    cannot read it."""
    if media_type in LAYER_TYPES:
        return LAYER_TYPES[media_type]
    if media_type in UNREADABLE_LAYER_TYPES:
        raise LayoutError(path, UNREADABLE_LAYER_TYPES[media_type], key=key, value=media_type)
    raise LayoutError(path, "not a layer type governor reads (tar or tar+gzip: "
                      f"{', '.join(sorted(LAYER_TYPES))})", key=key, value=media_type)


def _str_list(v: object, path: str, key: str) -> list[str] | None:
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise LayoutError(path, "a list of strings is needed", key=key, value=v)
    return list(v)


def parse_config(data: bytes, path: str) -> ImageConfig:
    doc = load_json(data, path)
    cfg = _get(doc, "config", dict, path, "", required=False) or {}
    env = _str_list(cfg.get("Env"), path, "config.Env") or []
    for i, item in enumerate(env):
        if "=" not in item or item.startswith("="):
            raise LayoutError(path, "each entry is NAME=VALUE", key=f"config.Env[{i}]",
                              value=item)
    workdir = _get(cfg, "WorkingDir", str, path, "config.", required=False) or ""
    user = _get(cfg, "User", str, path, "config.", required=False) or ""
    rootfs = _get(doc, "rootfs", dict, path, "")
    if rootfs.get("type") != "layers":
        raise LayoutError(path, "must be \"layers\"", key="rootfs.type", value=rootfs.get("type"))
    ids = _str_list(rootfs.get("diff_ids"), path, "rootfs.diff_ids")
    if ids is None:
        raise LayoutError(path, "missing", key="rootfs.diff_ids")
    diff_ids = [check_digest(d, path=path, key=f"rootfs.diff_ids[{i}]")
                for i, d in enumerate(ids)]
    os_name = doc.get("os", "linux")
    if os_name != "linux":
        raise LayoutError(path, "governor runs linux images", key="os", value=os_name)
    arch = doc.get("architecture", "")
    return ImageConfig(env=env, working_dir=workdir,
                       entrypoint=_str_list(cfg.get("Entrypoint"), path, "config.Entrypoint"),
                       cmd=_str_list(cfg.get("Cmd"), path, "config.Cmd"), user=user,
                       diff_ids=diff_ids, architecture=arch if isinstance(arch, str) else "")


# -- references ------------------------------------------------------------------------------
def check_tag(tag: str, value: str) -> str:
    if not TAG_RE.fullmatch(tag):
        raise BadReference(value, f"tag {tag!r} is not valid: letters, digits, '_', '.', '-', "
                           "at most 128, not starting with '.' or '-'")
    return tag


def check_name(name: str, value: str) -> str:
    if not NAME_RE.fullmatch(name) or len(name) > 255:
        raise BadReference(value, f"name {name!r} is not valid: lowercase letters and digits, "
                           "separated by '.', '_', '-' or '/', e.g. \"acme/web\"")
    return name


def split_tag(value: str) -> tuple[str, str | None]:
    """``X:TAG`` -> ``(X, TAG)`` when the part after the last ':' could be a tag (no '/')."""
    head, sep, tail = value.rpartition(":")
    if sep and head and "/" not in tail:
        return head, tail
    return value, None


def parse_image_ref(value: str, *, default_tag: str = DEFAULT_TAG) -> tuple[str, str]:
    """``NAME[:TAG]`` -> ``(NAME, TAG)``, both checked."""
    name, tag = split_tag(value)
    return check_name(name, value), check_tag(tag if tag is not None else default_tag, value)


def parse_source(value: str, *, exists: Any = os.path.lexists) -> tuple[str, str | None]:
    """``PATH[:TAG]`` -> ``(PATH, TAG or None)``.  A path that itself contains ':' and
    exists is taken whole."""
    if not value:
        raise BadReference(value, "give the path of an OCI image layout or a directory")
    path, tag = split_tag(value)
    if tag is None or (exists(value) and not exists(path)):
        return value, None
    return path, check_tag(tag, value)


def default_name(path: str) -> str:
    """The image name when none is given: the source directory's name, made valid."""
    base = os.path.basename(os.path.normpath(os.path.abspath(path))).lower()
    name = re.sub(r"[^a-z0-9._-]+", "-", base).strip("._-")
    name = re.sub(r"[._-]{2,}", "-", name)
    return name or "image"


def image_ref(name_option: str | None, path: str, source_tag: str | None,
              manifest_tag: str | None) -> tuple[str, str]:
    """The ``(name, tag)`` an import is stored as: ``--name NAME[:TAG]``, else the source
    directory's name; the tag from ``--name``, else ``PATH:TAG``, else the manifest's
    ref.name annotation (when it is a valid tag), else ``latest``."""
    fallback = source_tag
    if fallback is None and manifest_tag is not None and TAG_RE.fullmatch(manifest_tag):
        fallback = manifest_tag
    if name_option is not None:
        name, tag = split_tag(name_option)
        return (check_name(name, name_option),
                check_tag(tag if tag is not None else fallback or DEFAULT_TAG, name_option))
    return default_name(path), fallback or DEFAULT_TAG
