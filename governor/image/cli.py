"""``governor image``: import, ls, rm, df.  Parses arguments and prints; the work is in
:mod:`governor.image.store` and :mod:`governor.image.source`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from governor.clikit import config_options, emit_json
from governor.config import Config

F = TypeVar("F", bound=Callable[..., Any])


def _format(func: F) -> F:
    """``--format table|json`` as every command that prints data, and ``--json`` for it."""
    func = click.option("--json", "as_json", is_flag=True,
                        help="same as --format json")(func)
    return click.option("--format", "fmt", type=click.Choice(["table", "json"]),
                        default="table", show_default=True,
                        help="table for people, json for scripts (stable field names)")(func)


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}TiB"


def short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


def _store(cfg: Callable[[], Config]) -> Any:
    from governor.image.limits import ImportLimits
    from governor.image.store import ImageStore

    c = cfg()
    return ImageStore(c.state_dir, limits=ImportLimits(
        max_layer_size=c.image_max_layer_size, max_layer_entries=c.image_max_layer_entries,
        min_free_space=c.image_min_free_space))


@click.group("image")
def image() -> None:
    """Images from OCI image layouts (or directories): a content-addressed layer store
    under the state directory, layers shared by images stored once."""


@image.command("import")
@config_options
@click.argument("source", metavar="PATH[:TAG]")
@click.option("--name", "name", metavar="NAME[:TAG]",
              help="store it as NAME:TAG [default: the directory's name, the tag of PATH:TAG "
                   "or of the manifest, else latest]")
def import_cmd(cfg: Callable[[], Config], source: str, name: str | None) -> None:
    """Import the OCI image layout PATH (the manifest tagged TAG, or its only one), or the
    directory PATH as a single layer.

    \b
    Every blob's sha256 digest and size is verified; each layer is unpacked once (a layer
    already stored is shared) with whiteouts in overlayfs form; a hostile layer (a path
    leaving it, a write through a symlink, a device node, a truncated archive) is refused
    and nothing of it is kept. So is a layer past the limits of the configuration's
    [images] section: max_layer_size (16G), max_layer_entries (1000000), and
    min_free_space (1G) left free on the state directory's filesystem.
    """
    from governor.image import oci
    from governor.image.source import read_source

    path, tag = oci.parse_source(source)
    src = read_source(path, tag)
    img_name, img_tag = oci.image_ref(name, path, tag, src.ref_tag)
    rec = _store(cfg).import_image(src, img_name, img_tag)
    click.echo(f"imported {rec.ref} {short(rec.digest)}: {len(rec.layers)} layer(s), "
               f"{human(rec.size)}")


@image.command("ls")
@config_options
@_format
def ls_cmd(cfg: Callable[[], Config], fmt: str, as_json: bool) -> None:
    """List the stored images: name, tag, digest, layers, size."""
    images = _store(cfg).images()
    if fmt == "json" or as_json:
        emit_json({"images": [i.as_dict() for i in images]})
        return
    click.echo(f"{'NAME':<30} {'TAG':<16} {'DIGEST':<12} {'LAYERS':>6} {'SIZE':>10}")
    for i in images:
        click.echo(f"{i.name:<30} {i.tag:<16} {short(i.digest):<12} {len(i.layers):>6} "
                   f"{human(i.size):>10}")


@image.command("rm")
@config_options
@click.argument("ref", metavar="NAME[:TAG]")
def rm_cmd(cfg: Callable[[], Config], ref: str) -> None:
    """Remove image NAME:TAG (tag default: latest) and the layers nothing else uses;
    refused while a running container uses the image."""
    from governor.image import oci

    name, tag = oci.parse_image_ref(ref)
    gone = _store(cfg).remove(name, tag)
    click.echo(f"removed {name}:{tag}; {len(gone)} layer(s) deleted"
               + (f": {', '.join(short(d) for d in gone)}" if gone else ""))


@image.command("df")
@config_options
@_format
def df_cmd(cfg: Callable[[], Config], fmt: str, as_json: bool) -> None:
    """Each layer's size on disk, how many images and running containers share it, the
    total and the bytes sharing saves."""
    du = _store(cfg).usage()
    if fmt == "json" or as_json:
        emit_json(du.as_dict())
        return
    click.echo(f"{'LAYER':<12} {'SIZE':>10} {'IMAGES':>6} {'CONTAINERS':>10}  USED BY")
    for r in du.layers:
        click.echo(f"{short(r.diff_id):<12} {human(r.size):>10} {len(r.images):>6} "
                   f"{len(r.containers):>10}  {', '.join(r.images) or '-'}")
    click.echo(f"total {human(du.total)} in {len(du.layers)} layer(s); sharing saves "
               f"{human(du.saved)}")
