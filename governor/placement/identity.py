"""Who a launched command runs as and what environment it gets (the rules are in
:mod:`governor.placement.launch`'s module doc, issue 15): shared by the launcher and by an
image's run configuration (:mod:`governor.image.runconfig`), below both.
"""

from __future__ import annotations

import os
import pwd
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from governor.errors import GovernorError

#: governor could not start the command (env(1), ``docker run``)
EXIT_LAUNCH_FAILED: Final = 125


class LaunchError(GovernorError):
    """governor itself could not start the command (exit 125)."""

    exit_code = EXIT_LAUNCH_FAILED


#: PATH of the launched command (Debian's login.defs ENV_SUPATH / ENV_PATH)
ROOT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USER_PATH: Final = "/usr/local/bin:/usr/bin:/bin"
#: variables copied from the caller's environment (terminal and locale only)
KEPT_VARS: Final = ("TERM", "COLORTERM", "LANG", "LANGUAGE", "TZ")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str = "/bin/sh"


def resolve_user(spec: str) -> User:
    """A user name or a numeric uid -> its ids and supplementary groups."""
    try:
        pw = pwd.getpwuid(int(spec)) if spec.isdigit() else pwd.getpwnam(spec)
    except (KeyError, OverflowError):
        raise LaunchError(f"no such user {spec!r}") from None
    return User(pw.pw_name, pw.pw_uid, pw.pw_gid,
                tuple(os.getgrouplist(pw.pw_name, pw.pw_gid)), pw.pw_dir,
                pw.pw_shell or "/bin/sh")


def parse_env_options(items: Iterable[str], caller: Mapping[str, str]) -> dict[str, str]:
    """``--env NAME=VALUE`` / ``--env NAME`` (copied from ``caller`` when set there, else
    left out, as ``docker run -e``) -> the variables passed explicitly."""
    out: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not _ENV_NAME.match(name):
            raise LaunchError(f"--env {item!r}: {name!r} is not a variable name (letters, "
                              "digits and _, not starting with a digit); write --env "
                              "NAME=VALUE or --env NAME")
        if "\0" in value:
            raise LaunchError(f"--env {name}: the value contains a NUL byte")
        if eq:
            out[name] = value
        elif name in caller:
            out[name] = caller[name]
    return out


def launch_env(caller: Mapping[str, str], user: User | None,
               explicit: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a launched command (see the module doc): an allow-list
    copied from ``caller``, identity variables of ``user`` (the account the command runs
    as: with no ``--user``, the caller's own), a safe ``PATH``, then ``explicit``."""
    env = {k: v for k, v in caller.items() if k in KEPT_VARS or k.startswith("LC_")}
    if user is not None:
        env.update(HOME=user.home, USER=user.name, LOGNAME=user.name, SHELL=user.shell)
    env["PATH"] = ROOT_PATH if user is None or user.uid == 0 else USER_PATH
    env.update(explicit or {})
    return env


def caller_user() -> User | None:
    """The account governor runs as (None when its uid has no passwd entry)."""
    try:
        return resolve_user(str(os.getuid()))
    except LaunchError:
        return None


