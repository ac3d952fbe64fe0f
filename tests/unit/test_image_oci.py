"""The OCI layout documents and image references, parsed from bytes and strings."""

from __future__ import annotations

import json
import re

import pytest

from governor.image import oci
from governor.image.errors import BadReference, LayoutError

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64


def desc(digest: str = D1, media: str = oci.MEDIA_MANIFEST, tag: str | None = None,
         **extra: object) -> dict[str, object]:
    d: dict[str, object] = {"mediaType": media, "digest": digest, "size": 10, **extra}
    if tag is not None:
        d["annotations"] = {oci.REF_NAME: tag}
    return d


def index(*descs: dict[str, object]) -> bytes:
    return json.dumps({"schemaVersion": 2, "manifests": list(descs)}).encode()


@pytest.mark.parametrize(("value", "want"), [
    ("img", ("img", None)), ("img:v1", ("img", "v1")), ("/a/b:v1.2", ("/a/b", "v1.2")),
    ("./x:latest", ("./x", "latest")), ("/with:colon/dir", ("/with:colon/dir", None)),
])
def test_parse_source(value: str, want: tuple[str, str | None]) -> None:
    assert oci.parse_source(value, exists=lambda p: False) == want


def test_a_path_with_a_colon_that_exists_is_taken_whole() -> None:
    assert oci.parse_source("/srv/a:b", exists=lambda p: p == "/srv/a:b") == ("/srv/a:b", None)


@pytest.mark.parametrize(("value", "problem"), [
    ("/a/b:-bad", "tag '-bad' is not valid"), ("", "give the path"),
])
def test_parse_source_refuses(value: str, problem: str) -> None:
    with pytest.raises(BadReference, match=problem):
        oci.parse_source(value, exists=lambda p: False)


@pytest.mark.parametrize(("value", "want"), [
    ("acme/web", ("acme/web", "latest")), ("acme/web:v2", ("acme/web", "v2")),
    ("a.b_c-d", ("a.b_c-d", "latest")),
])
def test_parse_image_ref(value: str, want: tuple[str, str]) -> None:
    assert oci.parse_image_ref(value) == want


@pytest.mark.parametrize("value", ["Acme", "acme/", "../x", "a:b:c/d", "a:", "a b"])
def test_parse_image_ref_refuses(value: str) -> None:
    with pytest.raises(BadReference, match=repr(value)):
        oci.parse_image_ref(value)


def test_image_ref_precedence() -> None:
    assert oci.image_ref(None, "/x/My Image", None, None) == ("my-image", "latest")
    assert oci.image_ref(None, "/x/app", None, "v3") == ("app", "v3")
    assert oci.image_ref(None, "/x/app", "v1", "v3") == ("app", "v1")
    assert oci.image_ref("web", "/x/app", "v1", None) == ("web", "v1")
    assert oci.image_ref("web:v9", "/x/app", "v1", None) == ("web", "v9")
    assert oci.image_ref(None, "/x/app", None, "example.com/a b") == ("app", "latest")


@pytest.mark.parametrize(("value", "problem"), [
    ("sha512:" + "a" * 128, "digest algorithm 'sha512' is not supported"),
    ("sha256:" + "A" * 64, "not a digest"), ("sha256:abc", "not a digest"),
    ("md5", "not a digest"), (42, "a digest string is needed"),
])
def test_check_digest(value: object, problem: str) -> None:
    with pytest.raises(LayoutError, match=problem) as e:
        oci.check_digest(value, path="f.json", key="layers[0].digest")
    assert str(e.value).startswith("f.json: layers[0].digest: ")


def test_layer_types() -> None:
    assert oci.layer_compression("application/vnd.oci.image.layer.v1.tar", path="m",
                                 key="k") == "none"
    assert oci.layer_compression("application/vnd.oci.image.layer.v1.tar+gzip", path="m",
                                 key="k") == "gzip"
    assert oci.layer_compression("application/vnd.docker.image.rootfs.diff.tar.gzip",
                                 path="m", key="k") == "gzip"
    with pytest.raises(LayoutError, match=r"tar\+zstd.*zstd-compressed layers need a zstd "
                       "decoder"):
        oci.layer_compression("application/vnd.oci.image.layer.v1.tar+zstd", path="m",
                              key="layers[1].mediaType")
    with pytest.raises(LayoutError, match="not a layer type governor reads"):
        oci.layer_compression("application/x-squashfs", path="m", key="k")


def test_select_manifest() -> None:
    descs = oci.parse_index(index(desc(D1, tag="v1"), desc(D2, tag="example.com/a:v2")),
                            "index.json")
    assert oci.select_manifest(descs, "v1", "index.json").digest == D1
    assert oci.select_manifest(descs, "v2", "index.json").digest == D2
    with pytest.raises(LayoutError, match=r"no manifest is tagged 'v3' \(tags: v1, v2\)"):
        oci.select_manifest(descs, "v3", "index.json")
    with pytest.raises(LayoutError, match="lists 2 manifests: name one as PATH:TAG"):
        oci.select_manifest(descs, None, "index.json")
    only = oci.parse_index(index(desc(D1)), "index.json")
    assert oci.select_manifest(only, None, "index.json").digest == D1


def test_select_platform() -> None:
    arch = oci.host_architecture()
    descs = oci.parse_index(index(
        desc(D1, platform={"os": "linux", "architecture": "riscv-none"}),
        desc(D2, platform={"os": "linux", "architecture": arch})), "nested")
    assert oci.select_platform(descs, "nested").digest == D2
    with pytest.raises(LayoutError, match="no manifest for platform linux/"):
        oci.select_platform(descs[:1], "nested")


@pytest.mark.parametrize(("doc", "key"), [
    ({"schemaVersion": 1, "manifests": []}, "schemaVersion"),
    ({"schemaVersion": 2}, "manifests"),
    ({"schemaVersion": 2, "manifests": [{"mediaType": "x", "digest": D1}]},
     "manifests[0].size"),
    ({"schemaVersion": 2, "manifests": [{"mediaType": "x", "digest": D1, "size": -1}]},
     "manifests[0].size"),
    ({"schemaVersion": 2, "manifests": [{"mediaType": "x", "digest": D1, "size": True}]},
     "manifests[0].size"),
])
def test_bad_index_names_the_key(doc: dict[str, object], key: str) -> None:
    with pytest.raises(LayoutError, match="^" + re.escape(f"index.json: {key}: ")):
        oci.parse_index(json.dumps(doc).encode(), "index.json")


def test_not_json() -> None:
    with pytest.raises(LayoutError, match=r"index\.json: not valid JSON"):
        oci.parse_index(b"{", "index.json")
    with pytest.raises(LayoutError, match="a JSON object is needed, found list"):
        oci.parse_index(b"[]", "index.json")


def manifest(**over: object) -> bytes:
    doc: dict[str, object] = {
        "schemaVersion": 2, "mediaType": oci.MEDIA_MANIFEST,
        "config": desc(D1, oci.MEDIA_CONFIG),
        "layers": [desc(D2, "application/vnd.oci.image.layer.v1.tar+gzip")]}
    doc.update(over)
    return json.dumps(doc).encode()


def test_parse_manifest() -> None:
    m = oci.parse_manifest(manifest(), "m")
    assert m.config.digest == D1 and [x.digest for x in m.layers] == [D2]
    with pytest.raises(LayoutError, match=r"m: layers\[0\].mediaType: .*zstd"):
        oci.parse_manifest(manifest(layers=[
            desc(D2, "application/vnd.oci.image.layer.v1.tar+zstd")]), "m")
    with pytest.raises(LayoutError, match=r"m: config\.mediaType: .*unsupported config"):
        oci.parse_manifest(manifest(config=desc(D1, "text/plain")), "m")
    with pytest.raises(LayoutError, match=r"m: mediaType: .*not an image manifest"):
        oci.parse_manifest(manifest(mediaType=oci.MEDIA_INDEX), "m")


def config(**cfg: object) -> bytes:
    return json.dumps({"os": "linux", "architecture": "amd64", "config": cfg,
                       "rootfs": {"type": "layers", "diff_ids": [D1]}}).encode()


def test_parse_config() -> None:
    c = oci.parse_config(config(Env=["PATH=/bin", "A=b=c"], WorkingDir="/srv",
                                Entrypoint=["/bin/sh", "-c"], Cmd=["echo hi"], User="1000:1000"),
                         "c")
    assert c.as_dict() == {"Env": ["PATH=/bin", "A=b=c"], "WorkingDir": "/srv",
                           "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"],
                           "User": "1000:1000"}
    assert c.diff_ids == [D1] and c.architecture == "amd64"
    empty = oci.parse_config(config(), "c")
    assert (empty.env, empty.entrypoint, empty.cmd, empty.working_dir) == ([], None, None, "")


@pytest.mark.parametrize(("cfg", "key"), [
    ({"Env": ["NOEQUALS"]}, r"config.Env\[0\]"), ({"Env": "A=b"}, "config.Env"),
    ({"Cmd": [1]}, "config.Cmd"), ({"WorkingDir": 5}, "config.WorkingDir"),
])
def test_bad_config_names_the_key(cfg: dict[str, object], key: str) -> None:
    with pytest.raises(LayoutError, match=f"^c: {key}: "):
        oci.parse_config(config(**cfg), "c")


def test_config_of_another_os_is_refused() -> None:
    doc = json.loads(config())
    doc["os"] = "windows"
    with pytest.raises(LayoutError, match="c: os: 'windows': governor runs linux images"):
        oci.parse_config(json.dumps(doc).encode(), "c")


@pytest.mark.parametrize(("data", "problem"), [
    (b"[" * 100_000, "nested too deeply"),                   # RecursionError in json
    (b'{"schemaVersion": ' + b"9" * 5000 + b"}", "4300"),  # int_max_str_digits
    (b'{"schemaVersion": 2, "manifests": [}', "Expecting value"),
    (b'{"a": "\xff"}', "utf-8"),                           # not UTF-8
], ids=["deep-nesting", "long-int", "syntax", "not-utf8"])
def test_hostile_json_is_a_layout_error(data: bytes, problem: str) -> None:
    """Each failure of the JSON parser is a LayoutError naming the file, never an
    unexpected RecursionError or ValueError."""
    with pytest.raises(LayoutError, match=r"^index\.json: not valid JSON.*" + problem):
        oci.parse_index(data, "index.json")
