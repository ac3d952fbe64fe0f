"""What an image's config makes of a container (image-spec ``config.md``, the ``config``
object), as ``docker run`` reads it: pure functions, tested on strings.

* the command: ``Entrypoint`` followed by ``Cmd``; a command given on the command line
  replaces ``Cmd`` (never ``Entrypoint``);
* the user: ``User`` (or ``--user``) as ``user``, ``uid``, ``user:group``, ``uid:gid``,
  ``user:gid`` or ``uid:group``, names resolved from the **image's** ``/etc/passwd`` and
  ``/etc/group`` (read inside the container's root after ``pivot_root``), never the
  host's: a host's ``app`` is not the image's ``app``.  A numeric uid needs no entry (its
  group is then 0 and its home ``/``, as docker does);
* the environment: governor's launch rules (:func:`governor.placement.identity.launch_env`:
  the caller's terminal and locale variables, the user's identity, a safe ``PATH``), then
  the image's ``Env`` over them, then each ``--env``;
* the working directory: ``WorkingDir``, absolute; ``/`` when empty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from governor.placement.identity import LaunchError, User, launch_env

#: the largest uid/gid (2^32 - 2: -1 is "no change" to the kernel)
MAX_ID = 2**32 - 2


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str
    shell: str


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def image_argv(image: str, entrypoint: Sequence[str] | None, cmd: Sequence[str] | None,
               given: Sequence[str]) -> list[str]:
    """``Entrypoint`` + (``given`` if any, else ``Cmd``): what ``docker run IMAGE [CMD]``
    runs."""
    argv = [*(entrypoint or []), *(given or cmd or [])]
    if not argv:
        raise LaunchError(f"image {image} has no Entrypoint or Cmd in its config: give the "
                          "command after --, e.g. governor launch --image "
                          f"{image} ... -- /bin/sh")
    return argv


def workdir(image: str, value: str) -> str:
    """``WorkingDir`` -> the absolute directory the command starts in."""
    if not value:
        return "/"
    if not value.startswith("/"):
        raise LaunchError(f"image {image}: WorkingDir {value!r} is not an absolute path "
                          "(config.WorkingDir must start with '/')")
    if "\0" in value:
        raise LaunchError(f"image {image}: WorkingDir {value!r} contains a NUL byte")
    return value


def _id(text: str) -> int | None:
    if not text.isdigit() or not text.isascii():
        return None
    n = int(text)
    return n if n <= MAX_ID else None


def parse_passwd(text: str) -> list[PasswdEntry]:
    """``/etc/passwd`` (passwd(5)): malformed lines and NIS ``+``/``-`` lines are skipped,
    as getpwnam(3) skips them."""
    out = []
    for line in text.splitlines():
        f = line.split(":")
        if len(f) != 7 or not f[0] or f[0][0] in "+-#":
            continue
        uid, gid = _id(f[2]), _id(f[3])
        if uid is None or gid is None:
            continue
        out.append(PasswdEntry(f[0], uid, gid, f[5] or "/", f[6] or "/bin/sh"))
    return out


def parse_group(text: str) -> list[GroupEntry]:
    """``/etc/group`` (group(5)), malformed lines skipped."""
    out = []
    for line in text.splitlines():
        f = line.split(":")
        if len(f) != 4 or not f[0] or f[0][0] in "+-#":
            continue
        gid = _id(f[2])
        if gid is None:
            continue
        out.append(GroupEntry(f[0], gid, tuple(m for m in f[3].split(",") if m)))
    return out


def resolve_user(image: str, spec: str, passwd: str | None, group: str | None, *,
                 source: str = "config.User") -> User:
    """``spec`` (``User`` of the image config or ``--user``) against the image's own
    passwd and group files (their text; None when the image has none)."""
    spec = spec or "0"
    user_part, sep, group_part = spec.partition(":")
    if not user_part or (sep and not group_part):
        raise LaunchError(f"image {image}: {source} {spec!r}: write user, uid, user:group "
                          "or uid:gid")
    users = parse_passwd(passwd or "")
    groups = parse_group(group or "")
    uid = _id(user_part)
    if uid is not None:
        entry = next((u for u in users if u.uid == uid), None)
    elif user_part.isdigit():
        raise LaunchError(f"image {image}: {source} {spec!r}: uid {user_part} is out of "
                          f"range (0 to {MAX_ID})")
    else:
        entry = next((u for u in users if u.name == user_part), None)
        if entry is None:
            where = "has no /etc/passwd" if passwd is None else \
                "has no such user in its /etc/passwd"
            raise LaunchError(f"image {image}: {source} {spec!r}: the image {where} (names "
                              "are looked up in the image, not on the host); use a numeric "
                              "uid[:gid] or add the user to the image")
        uid = entry.uid
    gid = entry.gid if entry is not None else 0
    if group_part:
        g = _id(group_part)
        if g is None:
            if group_part.isdigit():
                raise LaunchError(f"image {image}: {source} {spec!r}: gid {group_part} is out "
                                  f"of range (0 to {MAX_ID})")
            found = next((x for x in groups if x.name == group_part), None)
            if found is None:
                where = "has no /etc/group" if group is None else \
                    "has no such group in its /etc/group"
                raise LaunchError(f"image {image}: {source} {spec!r}: the image {where}; use a "
                                  "numeric gid or add the group to the image")
            g = found.gid
        gid = g
    name = entry.name if entry is not None else str(uid)
    supplementary = [x.gid for x in groups if entry is not None and entry.name in x.members]
    return User(name, uid, gid, tuple(dict.fromkeys([gid, *supplementary])),
                entry.home if entry is not None else "/",
                entry.shell if entry is not None else "/bin/sh")


def parse_image_env(image: str, env: Sequence[str]) -> dict[str, str]:
    """The config's ``Env`` (``NAME=VALUE`` each; checked at import) as a mapping."""
    out: dict[str, str] = {}
    for item in env:
        name, eq, value = item.partition("=")
        if not eq or not name or "\0" in item:
            raise LaunchError(f"image {image}: config.Env entry {item!r} is not NAME=VALUE")
        out[name] = value
    return out


def container_env(caller: Mapping[str, str], user: User, image_env: Mapping[str, str],
                  explicit: Mapping[str, str]) -> dict[str, str]:
    """The command's environment: launch's rules for ``user``, the image's ``Env`` over
    them, ``--env`` over both."""
    env = launch_env(caller, user)
    env.update(image_env)
    env.update(explicit)
    return env
