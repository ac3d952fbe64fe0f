"""``governor launch --image``: a container from an image of the store (issue #19).

In the launching process, before anything runs: the image's record is read
(:class:`~governor.image.store.ImageStore`), the command made from its ``Entrypoint`` and
``Cmd`` (or the one given), a container id drawn (random hex), and the container's
directories created under ``<state_dir>/containers/<id>/``: ``upper/`` (its writes),
``work/`` (overlayfs's scratch, same filesystem) and ``rootfs/`` (the mount point).  The
container is recorded, just before, with :meth:`ImageStore.add_container` under the launching
process's pid (so ``governor image rm`` refuses the image, and its layers are kept, from
before the overlay is mounted until after the container is gone; the child dies with
the launching process, so the record's pid lives exactly as long as the container can)
and run by :func:`governor.placement.launch.launch` with a
:class:`~governor.placement.rootfs.Rootfs`: join the group, namespaces, the overlay,
``pivot_root``, ``/proc``, ``/dev``, ``/sys``, the user and environment of the image, exec.

Afterwards (an exit, a signal, a SIGKILL of the child, a failed launch) ``work/`` and
``rootfs/`` are removed, and ``upper/`` too unless ``keep`` (then its path is printed),
then the record.  The directory of a launch that was itself SIGKILLed is removed by the
next launch (:func:`sweep`).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from governor.cgroupfs.files import CgroupFS
from governor.image import runconfig
from governor.image.errors import ImageError, describe_os_error
from governor.image.quota import QuotaError, set_project
from governor.image.store import ImageRecord, ImageStore
from governor.image.writable import Pool, WritableError
from governor.placement.identity import KEPT_VARS, LaunchError
from governor.placement.launch import Restart, launch
from governor.placement.rootfs import Rootfs

#: the namespaces of a container from an image unless --unshare names others (mount is
#: always added: the image is mounted in the container's own)
IMAGE_NAMESPACES: Final = "pid,mount,uts,ipc,net"
ID_BYTES: Final = 16  # 32 hex digits; the hostname is the first 12
RM_TRIES: Final = 5


@dataclass(frozen=True)
class ContainerDirs:
    root: str       # <state_dir>/containers/<id>
    upper: str
    work: str
    merged: str

    @classmethod
    def create(cls, state_dir: str, cid: str, project: int | None = None) -> ContainerDirs:
        """The directories of container ``cid``; with ``project`` the container's directory
        gets that project id (inherited by all below) before anything is made in it."""
        base = os.path.join(os.path.abspath(state_dir), "containers")
        root = os.path.join(base, cid)
        d = cls(root, os.path.join(root, "upper"), os.path.join(root, "work"),
                os.path.join(root, "rootfs"))
        try:
            os.makedirs(base, 0o700, exist_ok=True)
            os.mkdir(root, 0o700)
            if project is not None:
                set_project(root, project)
            os.mkdir(d.upper, 0o755)  # overlayfs gives the container's / this directory's
            os.chmod(d.upper, 0o755)  # noqa: S103 (mode; the umask must not narrow it)
            os.mkdir(d.work, 0o700)
            os.mkdir(d.merged, 0o755)
        except QuotaError as e:
            shutil.rmtree(root, ignore_errors=True)
            raise LaunchError(f"cannot give the container directory {root} its group's "
                              f"project: {e}") from e
        except OSError as e:
            shutil.rmtree(root, ignore_errors=True)
            raise LaunchError(f"cannot create the container directory {root}: "
                              f"{describe_os_error(e)} (state_dir must be writable by "
                              "governor, on a filesystem overlayfs takes as upper: ext4, "
                              "xfs, btrfs, tmpfs)") from e
        return d

    def remove(self, *, keep_upper: bool) -> None:
        """``work``, ``rootfs`` and (unless ``keep_upper``) ``upper`` with the directory."""
        paths = [self.work, self.merged] if keep_upper else [self.root]
        for p in paths:
            for attempt in range(RM_TRIES):
                try:
                    shutil.rmtree(p)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    # the container's pid 1 dies with its parent (PR_SET_PDEATHSIG), an
                    # instant after the launch saw that parent end: its mounts may still
                    # be going away
                    if e.errno in (errno.EBUSY, errno.ENOTEMPTY) and attempt < RM_TRIES - 1:
                        time.sleep(0.05 * (attempt + 1))
                        continue
                    raise LaunchError(f"cannot remove {p} after the container ended: "
                                      f"{describe_os_error(e)}") from e


def sweep(state_dir: str, store: ImageStore) -> list[str]:
    """Remove the directories a killed launch left (``governor launch`` itself SIGKILLed:
    its container died with it, PR_SET_PDEATHSIG, but nothing ran its cleanup): those
    that still have ``work/`` (a ``--keep``'d container has only ``upper/``) and no live
    record.  The listing is read before the records, and a launch records its container
    before creating its directory, so a directory listed here whose launch runs has its
    record read below."""
    base = os.path.join(os.path.abspath(state_dir), "containers")
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise LaunchError(f"cannot list {base}: {describe_os_error(e)}") from e
    try:
        live = {rec.id for rec in store.containers()}
    except ImageError as e:
        raise LaunchError(str(e)) from e
    gone = []
    for name in sorted(names):
        d = os.path.join(base, name)
        if name in live or not os.path.isdir(os.path.join(d, "work")):
            continue
        shutil.rmtree(d, ignore_errors=True)
        gone.append(name)
    return gone


def namespaces(unshare: str | None) -> str:
    """``--unshare`` with ``--image``: the list given (mount added), else the default."""
    if unshare is None:
        return IMAGE_NAMESPACES
    return ",".join(dict.fromkeys([*filter(None, (x.strip() for x in unshare.split(","))),
                                   "mount"]))


def plan(img: ImageRecord, store: ImageStore, dirs: ContainerDirs, command: Sequence[str], *,
         user: str | None, env: Mapping[str, str],
         caller: Mapping[str, str]) -> tuple[list[str], Rootfs]:
    """The argv and the :class:`Rootfs` of a container of ``img`` (pure but for paths)."""
    cfg = img.config
    argv = runconfig.image_argv(img.ref, cfg.get("Entrypoint"), cfg.get("Cmd"), command)
    rootfs = Rootfs(
        image=img.ref,
        lowers=tuple(store.layer_path(d) for d in reversed(img.layers)),
        upper=dirs.upper, work=dirs.work, merged=dirs.merged,
        workdir=runconfig.workdir(img.ref, cfg.get("WorkingDir") or ""),
        user=user if user is not None else (cfg.get("User") or ""),
        user_source="--user" if user is not None else "config.User",
        image_env=runconfig.parse_image_env(img.ref, cfg.get("Env") or []),
        explicit_env=dict(env),
        caller_env={k: v for k, v in caller.items() if k in KEPT_VARS or k.startswith("LC_")})
    return argv, rootfs


def launch_image(fs: CgroupFS, rel: str, store: ImageStore, ref: tuple[str, str],
                 command: Sequence[str], *, state_dir: str, unshare: str | None = None,
                 hostname: str | None = None, user: str | None = None,
                 env: Mapping[str, str] | None = None, keep: bool = False,
                 restart: Restart | None = None, group: str | None = None,
                 pool: Pool | None = None, storage_max: int | None = None,
                 caller: Mapping[str, str] | None = None) -> int:
    """Run a container of image ``ref`` (name, tag) in group ``rel``; returns the exit
    code (the rules of :func:`launch`).

    Its writable layer is in the project of ``group`` (the policy's ``tenant/group``;
    default ``rel``) on ``pool`` (default: the state directory's, with no pool file), whose
    hard limit is set to ``storage_max`` (None: none) first: see governor.image.writable."""
    name, tag = ref
    try:
        img = store.get(name, tag)
    except ImageError as e:
        raise LaunchError(str(e)) from e
    pool = pool or Pool(state_dir)
    try:
        pool.ensure()
        project = pool.project_for(group or rel)
        pool.set_limit(project, storage_max)
    except (WritableError, QuotaError) as e:
        raise LaunchError(f"the writable layer of a container of {img.ref} in "
                          f"{group or rel}: {e}") from e
    cid = secrets.token_hex(ID_BYTES)
    sweep(state_dir, store)
    try:  # recorded before its directory exists: see sweep
        store.add_container(cid, name, tag, os.getpid())
    except ImageError as e:
        raise LaunchError(f"container {cid}: {e}") from e
    try:
        dirs = ContainerDirs.create(state_dir, cid, project)
        try:
            argv, rootfs = plan(img, store, dirs, command, user=user, env=env or {},
                                caller=os.environ if caller is None else caller)
            ns = namespaces(unshare)
            if hostname is None and "uts" in ns.split(","):
                hostname = cid[:12]
            return launch(fs, rel, argv, unshare=ns, hostname=hostname, restart=restart,
                          rootfs=rootfs)
        finally:
            dirs.remove(keep_upper=keep)
            if keep:
                print(f"governor: launch: container {cid}: upper layer kept in "
                      f"{dirs.upper}", file=sys.stderr, flush=True)
    finally:
        store.remove_container(cid)
