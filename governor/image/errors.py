"""The errors of ``governor image``: each names the image, the path or key, the value and
what would be right; the command line prints one line and exits non-zero."""

from __future__ import annotations

import errno as _errno
import os

from governor.errors import GovernorError


def describe_os_error(e: OSError) -> str:
    """``[ENOSPC] No space left on device`` for an OSError (its errno and message)."""
    if e.errno is None:
        return str(e)
    return f"[{_errno.errorcode.get(e.errno, str(e.errno))}] {e.strerror or os.strerror(e.errno)}"


class ImageError(GovernorError):
    """Base of the image errors: the image or layout is wrong (exit 1)."""

    exit_code = 1


class BadReference(ImageError):
    """``PATH[:TAG]`` or ``NAME[:TAG]`` that cannot be used: a usage error (exit 2)."""

    exit_code = 2

    def __init__(self, value: str, problem: str) -> None:
        self.value = value
        super().__init__(f"{value!r}: {problem}")


class LayoutError(ImageError):
    """An OCI image layout (or a JSON document in it) that is malformed or unsupported.

    ``path`` is the file, ``key`` the JSON key (dotted), ``value`` what was found."""

    def __init__(self, path: str, problem: str, *, key: str | None = None,
                 value: object = None, err: int | None = None) -> None:
        self.path = path
        self.key = key
        self.value = value
        self.errno = err
        where = f"{path}: {key}" if key else path
        msg = f"{where}: "
        if value is not None:
            msg += f"{value!r}: "
        super().__init__(msg + problem)


class BlobError(ImageError):
    """A blob whose digest or size differs from its descriptor's (or that is missing)."""

    def __init__(self, path: str, digest: str, problem: str) -> None:
        self.path = path
        self.digest = digest
        super().__init__(f"{path}: blob {digest}: {problem}")


class UnsafeLayer(ImageError):
    """A layer archive refused while unpacking: names the image, the layer's digest, the
    member and why.  Nothing of the layer is kept."""

    def __init__(self, image: str, layer: str, member: str | None, problem: str) -> None:
        self.image = image
        self.layer = layer
        self.member = member
        where = f"image {image}: layer {layer}"
        if member is not None:
            where += f": member {member!r}"
        super().__init__(f"{where}: {problem}")


class LayerLimit(UnsafeLayer):
    """A layer past one of the limits of the configuration's ``[images]`` section: names
    the image, the layer, the limit, its value and the key that raises it.  Nothing of the
    layer is kept (exit 1: the image is larger than this host accepts)."""

    def __init__(self, image: str, layer: str, member: str | None, problem: str, *,
                 key: str, limit: str) -> None:
        self.key = key
        self.limit = limit
        section, _, name = key.partition(".")
        super().__init__(image, layer, member, f"{problem}: the limit is {key} = {limit}; "
                         f"to import it, raise {name} in the [{section}] section of the "
                         "configuration")


class StoreError(ImageError):
    """The image store itself cannot be used (permissions, a filesystem without trusted
    xattrs, a full disk): names the path and the errno.  An environment error (exit 2)."""

    exit_code = 2

    def __init__(self, path: str, problem: str, *, err: int | None = None) -> None:
        self.path = path
        self.errno = err
        super().__init__(f"image store {path}: {problem}")


class LowSpace(StoreError):
    """Unpacking a layer would leave the state directory's filesystem with less free space
    than ``[images] min_free_space`` keeps (for the database, the spool, the logs): names
    the image, the layer (and member), the space free and the key.  Nothing of the layer is
    kept.  An environment error (exit 2)."""

    def __init__(self, path: str, image: str, layer: str, member: str | None, problem: str,
                 *, key: str, limit: str) -> None:
        self.image = image
        self.layer = layer
        self.member = member
        self.key = key
        self.limit = limit
        section, _, name = key.partition(".")
        where = f"image {image}: layer {layer}"
        if member is not None:
            where += f": member {member!r}"
        super().__init__(path, f"{where}: {problem}, less than {key} = {limit} keeps free: "
                         "free some space (governor image df, governor image rm) or lower "
                         f"{name} in the [{section}] section of the configuration",
                         err=_errno.ENOSPC)


class ImageNotFound(ImageError):
    """``NAME:TAG`` is not in the store (exit 2, like other unknown names)."""

    exit_code = 2

    def __init__(self, ref: str, known: list[str]) -> None:
        self.ref = ref
        super().__init__(f"no image {ref!r} in the store "
                         f"(images: {', '.join(sorted(known)) or 'none'})")


class ImageInUse(ImageError):
    """``image rm`` of an image a running container uses."""

    def __init__(self, ref: str, containers: list[str]) -> None:
        self.ref = ref
        self.containers = containers
        super().__init__(f"image {ref} is used by running container(s) "
                         f"{', '.join(containers)}: stop them first")
