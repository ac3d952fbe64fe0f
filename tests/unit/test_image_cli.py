"""``governor image import|ls|rm|df`` end to end through :func:`governor.cli.main`, on
layouts this suite writes and on one ``umoci`` writes (umoci is in scripts/setup.sh's
test packages)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from governor.cli import main
from governor.image.store import ImageStore
from governor.image.unpack import OPAQUE_XATTR
from tests.unit.oci_writer import (
    OCILayout,
    base_members,
    file,
    gz_layer,
    layer,
    make_tar,
    symlink,
    upper_members,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts (mknod) need root")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[governor]\nstate_dir = "{tmp_path}/state"\n')
    return cfg


def run(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, str, str]:
    code = main(["image", *args, "--config", str(config)])
    out = capsys.readouterr()
    return code, out.out, out.err


@needs_root
def test_import_ls_df_rm(tmp_path: Path, config: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    lay = OCILayout(tmp_path / "shop")
    base = layer(base_members())
    lay.add_image([base], tag="base")
    lay.add_image([base, layer(upper_members())], tag="v2")
    code, out, err = run(capsys, config, "import", f"{lay.root}:v2")
    assert (code, err) == (0, "")
    assert out.startswith("imported shop:v2 ") and "2 layer(s)" in out
    code, out, _ = run(capsys, config, "import", f"{lay.root}:base", "--name", "acme/base")
    assert code == 0 and out.startswith("imported acme/base:base ")

    code, out, _ = run(capsys, config, "ls")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "TAG", "DIGEST", "LAYERS", "SIZE"]
    assert [[*ln.split()[:2], ln.split()[3]] for ln in lines[1:]] == [
        ["acme/base", "base", "1"], ["shop", "v2", "2"]]
    code, out, _ = run(capsys, config, "ls", "--json")
    images = json.loads(out)["images"]
    assert [(i["name"], i["tag"], len(i["layers"])) for i in images] == [
        ("acme/base", "base", 1), ("shop", "v2", 2)]
    assert images[1]["digest"] == lay.manifests[1]["digest"]

    code, out, _ = run(capsys, config, "df", "--format", "json")
    du = json.loads(out)
    by = {x["diff_id"]: x for x in du["layers"]}
    assert by[base.diff_id]["images"] == ["acme/base:base", "shop:v2"]
    assert du["saved"] == by[base.diff_id]["size"] > 0
    assert du["total"] == sum(x["size"] for x in du["layers"])
    code, out, _ = run(capsys, config, "df")
    assert code == 0 and "acme/base:base, shop:v2" in out
    assert out.splitlines()[-1].startswith("total ") and "sharing saves" in out

    code, out, _ = run(capsys, config, "rm", "shop:v2")
    assert code == 0 and out.startswith("removed shop:v2; 1 layer(s) deleted: ")
    code, out, _ = run(capsys, config, "rm", "acme/base:base")
    assert code == 0 and "1 layer(s) deleted" in out
    assert json.loads(run(capsys, config, "ls", "--json")[1]) == {"images": []}


@needs_root
def test_rm_refused_while_a_container_uses_the_image(tmp_path: Path, config: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    lay = OCILayout(tmp_path / "app")
    lay.add_image([layer([file("a", b"1")])])
    assert run(capsys, config, "import", str(lay.root))[0] == 0
    store = ImageStore(str(tmp_path / "state"))
    store.add_container("web-1", "app", "latest", os.getpid())
    code, out, err = run(capsys, config, "rm", "app")
    assert code == 1 and out == ""
    assert err == (f"governor: error: image app:latest is used by running container(s) "
                   f"web-1 (pid {os.getpid()}): stop them first\n")
    code, out, _ = run(capsys, config, "df")
    assert out.splitlines()[1].split()[2:4] == ["1", "1"]  # 1 image, 1 container
    store.remove_container("web-1")
    assert run(capsys, config, "rm", "app")[0] == 0


@pytest.mark.parametrize(("args", "code", "message"), [
    (["import", "/no/such/dir"], 2, "'/no/such/dir': no such directory"),
    (["rm", "Bad Name"], 2, "name 'Bad Name' is not valid"),
    (["rm", "ghost:1"], 2, "no image 'ghost:1' in the store (images: none)"),
    (["import", "{tmp}:-x"], 2, "tag '-x' is not valid"),
])
def test_errors_are_one_line(tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str],
                             args: list[str], code: int, message: str) -> None:
    got, out, err = run(capsys, config, *[a.format(tmp=tmp_path) for a in args])
    assert got == code and out == ""
    assert err.count("\n") == 1 and err.startswith("governor: error: ") and message in err, err


def test_rm_of_an_image_that_is_not_there(tmp_path: Path, config: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 2, as every governor command exits for a name it does not know (an unknown
    tenant: UnknownTenant), not 1 (the thing is wrong) and not 0; nothing else changes."""
    state = tmp_path / "state"
    code, out, err = run(capsys, config, "rm", "ghost")
    assert (code, out) == (2, "")
    assert err == ("governor: error: no image 'ghost:latest' in the store (images: none)\n")
    assert not state.exists()  # no store is made to say so
    lay = OCILayout(tmp_path / "app")
    lay.add_image([layer([file("a", b"1")])])
    assert run(capsys, config, "import", str(lay.root))[0] == 0
    store = ImageStore(str(state))
    layers = os.listdir(store.layers_dir)
    for ref in ("app:v2", "ghost"):  # another tag of a stored name; another name
        code, out, err = run(capsys, config, "rm", ref)
        assert (code, out) == (2, "")
        assert err == (f"governor: error: no image {(ref if ':' in ref else ref + ':latest')!r}"
                       " in the store (images: app:latest)\n")
    assert [i.ref for i in store.images()] == ["app:latest"]
    assert os.listdir(store.layers_dir) == layers
    assert run(capsys, config, "rm", "app")[0] == 0
    assert run(capsys, config, "rm", "app")[0] == 2  # the second time: gone


def test_a_hostile_import_is_one_line_and_leaves_nothing(
        tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    lay = OCILayout(tmp_path / "evil")
    lay.add_image([layer([symlink("link", str(outside)), file("link/evil", b"x")])])
    code, out, err = run(capsys, config, "import", str(lay.root))
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "image evil:latest: layer sha256:" in err
    assert "member 'link/evil': its parent link is a symlink" in err
    assert os.listdir(outside) == []
    store = ImageStore(str(tmp_path / "state"))
    assert os.listdir(store.layers_dir) == [] and os.listdir(store.tmp_dir) == []


def test_the_limits_come_from_the_configuration(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """[images] max_layer_size and min_free_space reach the import: a layer past one is
    refused in one line naming the key (exit 1; too little room: exit 2), images/tmp/ is
    left empty, the image imported before stays; raised, the same import passes."""
    cfg = tmp_path / "config.toml"

    def limits(text: str) -> None:
        cfg.write_text(f'[governor]\nstate_dir = "{tmp_path}/state"\n[images]\n{text}\n')

    limits('max_layer_size = "1M"\nmin_free_space = 0')
    good = OCILayout(tmp_path / "good")
    good.add_image([layer([file("ok", b"ok")])])
    assert run(capsys, cfg, "import", str(good.root))[0] == 0
    bomb = OCILayout(tmp_path / "bomb")  # 4 MiB of zeros after the archive's end
    m = bomb.add_image([gz_layer(make_tar([file("a", b"x")]) + bytes(4 << 20))])
    assert bomb.blob_path(bomb.layer_digests(m)[0]).stat().st_size < 64 << 10
    code, out, err = run(capsys, cfg, "import", str(bomb.root))
    assert (code, out) == (1, "")
    assert err == (f"governor: error: image bomb:latest: layer {bomb.layer_digests(m)[0]}: "
                   'uncompresses to more than 1048576 bytes: the limit is '
                   'images.max_layer_size = "1M"; to import it, raise max_layer_size in the '
                   "[images] section of the configuration\n")
    store = ImageStore(str(tmp_path / "state"))
    assert os.listdir(store.tmp_dir) == []
    assert [i.ref for i in store.images()] == ["good:latest"]

    limits('min_free_space = "1024T"')  # more than any disk the tests run on has free
    code, out, err = run(capsys, cfg, "import", str(bomb.root))
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert "bytes are free on its filesystem" in err
    assert 'less than images.min_free_space = "1024T" keeps free' in err
    assert os.listdir(store.tmp_dir) == [] and len(store.images()) == 1

    limits('max_layer_size = "8M"\nmin_free_space = 0')
    assert run(capsys, cfg, "import", str(bomb.root))[0] == 0
    assert [i.ref for i in store.images()] == ["bomb:latest", "good:latest"]


def test_a_bad_digest_through_the_cli(tmp_path: Path, config: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    lay = OCILayout(tmp_path / "img")
    m = lay.add_image([layer([file("a", b"x")])])
    blob = lay.blob_path(lay.layer_digests(m)[0])
    blob.write_bytes(blob.read_bytes() + b"!")
    code, _, err = run(capsys, config, "import", str(lay.root))
    assert code == 1 and "the descriptor says" in err and str(blob) in err


def test_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["image", "--help"]) == 0
    out = capsys.readouterr().out
    for sub in ("import", "ls", "rm", "df"):
        assert f"  {sub}" in out


def umoci(*args: str, cwd: Path) -> None:
    subprocess.run(["umoci", *args], cwd=cwd, check=True, capture_output=True)


@needs_root
@pytest.mark.skipif(shutil.which("umoci") is None,
                    reason="umoci is not installed (scripts/setup.sh --test installs it)")
def test_a_layout_umoci_wrote(tmp_path: Path, config: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    umoci("init", "--layout", "lay", cwd=tmp_path)
    umoci("new", "--image", "lay:t", cwd=tmp_path)
    umoci("config", "--image", "lay:t", "--config.env", "GREETING=hi",
          "--config.workingdir", "/srv", "--config.cmd", "/bin/true", cwd=tmp_path)
    umoci("unpack", "--image", "lay:t", "b1", cwd=tmp_path)
    root = tmp_path / "b1" / "rootfs"
    (root / "etc").mkdir()
    (root / "etc/motd").write_text("hi\n")
    (root / "data").mkdir()
    (root / "data/old").write_text("1")
    umoci("repack", "--image", "lay:t", "b1", cwd=tmp_path)
    umoci("unpack", "--image", "lay:t", "b2", cwd=tmp_path)
    root = tmp_path / "b2" / "rootfs"
    (root / "etc/motd").unlink()           # umoci writes a .wh.motd whiteout
    shutil.rmtree(root / "data")           # and the directory replaced as a whole
    (root / "data").mkdir()
    (root / "data/new").write_text("2")
    umoci("repack", "--image", "lay:t", "b2", cwd=tmp_path)

    code, out, err = run(capsys, config, "import", f"{tmp_path / 'lay'}:t")
    assert (code, err) == (0, ""), err
    assert out.startswith("imported lay:t ") and "2 layer(s)" in out
    rec = ImageStore(str(tmp_path / "state")).get("lay", "t")
    assert rec.config["Env"][-1] == "GREETING=hi" and rec.config["WorkingDir"] == "/srv"
    assert rec.config["Cmd"] == ["/bin/true"]
    low = Path(ImageStore(str(tmp_path / "state")).layer_path(rec.layers[0]))
    up = Path(ImageStore(str(tmp_path / "state")).layer_path(rec.layers[1]))
    assert (low / "etc/motd").read_text() == "hi\n"
    assert stat.S_ISCHR((up / "etc/motd").lstat().st_mode)
    assert (up / "data/new").read_text() == "2"
    # umoci says "data was replaced" either with an opaque marker or by whiting out each
    # old entry; the upper layer hides data/old one way or the other
    old = up / "data/old"
    opaque = OPAQUE_XATTR in os.listxattr(up / "data")
    assert opaque or stat.S_ISCHR(old.lstat().st_mode)
