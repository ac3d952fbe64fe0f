"""``launch --image``, the pure parts: the image config -> argv, user (from the image's own
passwd and group files), environment, working directory; the overlay's mount options and
the namespaces.  What the kernel does with them is in tests/kernel/test_image_kernel.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from governor.image import runconfig
from governor.image.store import ImageRecord, ImageStore
from governor.placement.container import IMAGE_NAMESPACES, ContainerDirs, namespaces, plan
from governor.placement.identity import ROOT_PATH, USER_PATH, LaunchError, User
from governor.placement.launch import parse_unshare
from governor.placement.rootfs import MAX_MOUNT_DATA, RootfsError, overlay_options

IMG = "shop:v2"
PASSWD = """root:x:0:0:root:/root:/bin/ash
daemon:x:1:1:daemon:/usr/sbin:/sbin/nologin
+nis::::::
broken line
app:x:1000:1000:App:/home/app:/bin/sh
svc:x:2000:2001::/srv:
"""
GROUP = """root:x:0:root
staff:x:50:app,svc
app:x:1000:
svcgrp:x:2001:
web:x:33:app
"""


@pytest.mark.parametrize(("entrypoint", "cmd", "given", "want"), [
    (None, ["/bin/sh"], [], ["/bin/sh"]),
    (["/bin/app", "--serve"], ["--port", "80"], [], ["/bin/app", "--serve", "--port", "80"]),
    # a command given replaces Cmd, never Entrypoint (docker run IMAGE CMD)
    (["/bin/app", "--serve"], ["--port", "80"], ["--port", "8080"],
     ["/bin/app", "--serve", "--port", "8080"]),
    (None, ["/bin/sh"], ["echo", "hi"], ["echo", "hi"]),
    (["/bin/sh", "-c"], None, ["exit 3"], ["/bin/sh", "-c", "exit 3"]),
])
def test_argv_is_entrypoint_then_cmd_or_given(entrypoint: list[str] | None,
                                              cmd: list[str] | None, given: list[str],
                                              want: list[str]) -> None:
    assert runconfig.image_argv(IMG, entrypoint, cmd, given) == want


def test_argv_none_at_all_names_the_image() -> None:
    with pytest.raises(LaunchError, match=r"image shop:v2 has no Entrypoint or Cmd in its "
                       r"config: give the command after --"):
        runconfig.image_argv(IMG, None, [], [])


@pytest.mark.parametrize(("spec", "want"), [
    ("", User("root", 0, 0, (0,), "/root", "/bin/ash")),
    ("0", User("root", 0, 0, (0,), "/root", "/bin/ash")),
    ("root", User("root", 0, 0, (0,), "/root", "/bin/ash")),
    # a name from the image's passwd; supplementary groups from its group file
    ("app", User("app", 1000, 1000, (1000, 50, 33), "/home/app", "/bin/sh")),
    ("1000", User("app", 1000, 1000, (1000, 50, 33), "/home/app", "/bin/sh")),
    ("app:staff", User("app", 1000, 50, (50, 33), "/home/app", "/bin/sh")),
    ("app:7", User("app", 1000, 7, (7, 50, 33), "/home/app", "/bin/sh")),
    ("svc", User("svc", 2000, 2001, (2001, 50), "/srv", "/bin/sh")),
    # numeric ids need no entry: gid 0 and home / (as docker)
    ("4242", User("4242", 4242, 0, (0,), "/", "/bin/sh")),
    ("4242:4343", User("4242", 4242, 4343, (4343,), "/", "/bin/sh")),
    ("4242:web", User("4242", 4242, 33, (33,), "/", "/bin/sh")),
])
def test_user_from_the_images_own_files(spec: str, want: User) -> None:
    assert runconfig.resolve_user(IMG, spec, PASSWD, GROUP) == want


def test_user_name_is_never_the_hosts() -> None:
    """``nobody`` and ``root`` exist on every host; an image without them must not get
    the host's ids."""
    with pytest.raises(LaunchError, match=r"image shop:v2: config.User 'nobody': the image "
                       r"has no such user in its /etc/passwd \(names are looked up in the "
                       r"image, not on the host\)"):
        runconfig.resolve_user(IMG, "nobody", PASSWD, GROUP)
    with pytest.raises(LaunchError, match=r"--user 'app': the image has no /etc/passwd"):
        runconfig.resolve_user(IMG, "app", None, None, source="--user")
    # numeric ids work without the files
    assert runconfig.resolve_user(IMG, "12:34", None, None).uid == 12


@pytest.mark.parametrize(("spec", "message"), [
    ("app:nogroup", r"config.User 'app:nogroup': the image has no such group in its "
                    r"/etc/group; use a numeric gid"),
    ("app:", r"config.User 'app:': write user, uid, user:group or uid:gid"),
    (":50", r"config.User ':50': write user, uid, user:group or uid:gid"),
    ("99999999999", r"uid 99999999999 is out of range \(0 to 4294967294\)"),
    ("1:99999999999", r"gid 99999999999 is out of range"),
])
def test_user_errors_name_the_value(spec: str, message: str) -> None:
    with pytest.raises(LaunchError, match=message):
        runconfig.resolve_user(IMG, spec, PASSWD, GROUP)


def test_env_order_launch_rules_then_image_then_explicit() -> None:
    caller = {"TERM": "xterm", "LANG": "C.UTF-8", "GOVERNOR_DATABASE": "postgres://s3cret",
              "PATH": "/tmp/evil"}
    app = runconfig.resolve_user(IMG, "app", PASSWD, GROUP)
    image_env = runconfig.parse_image_env(IMG, ["PATH=/opt/app/bin:/bin", "MODE=image",
                                                "EMPTY=", "EQ=a=b"])
    env = runconfig.container_env(caller, app, image_env, {"MODE": "cli"})
    assert env == {"TERM": "xterm", "LANG": "C.UTF-8", "HOME": "/home/app", "USER": "app",
                   "LOGNAME": "app", "SHELL": "/bin/sh", "PATH": "/opt/app/bin:/bin",
                   "MODE": "cli", "EMPTY": "", "EQ": "a=b"}
    root = runconfig.resolve_user(IMG, "", PASSWD, GROUP)
    assert runconfig.container_env({}, root, {}, {})["PATH"] == ROOT_PATH
    assert runconfig.container_env({}, app, {}, {})["PATH"] == USER_PATH
    with pytest.raises(LaunchError, match=r"config.Env entry 'NOEQUALS' is not NAME=VALUE"):
        runconfig.parse_image_env(IMG, ["NOEQUALS"])


@pytest.mark.parametrize(("value", "want"), [("", "/"), ("/srv/app", "/srv/app"),
                                             ("/", "/")])
def test_workdir(value: str, want: str) -> None:
    assert runconfig.workdir(IMG, value) == want


def test_workdir_relative_refused() -> None:
    with pytest.raises(LaunchError, match=r"WorkingDir 'srv' is not an absolute path"):
        runconfig.workdir(IMG, "srv")


def test_passwd_and_group_parsing_skips_what_getpwnam_skips() -> None:
    users = runconfig.parse_passwd(PASSWD)
    assert [u.name for u in users] == ["root", "daemon", "app", "svc"]
    assert users[-1].shell == "/bin/sh"  # empty shell field: /bin/sh
    groups = runconfig.parse_group(GROUP + "bad:x:notanumber:\n")
    assert [g.name for g in groups] == ["root", "staff", "app", "svcgrp", "web"]
    assert groups[1].members == ("app", "svc")


def test_overlay_options_top_layer_first_and_refusals() -> None:
    assert overlay_options(["/s/l/top", "/s/l/base"], "/s/c/u", "/s/c/w") == \
        "lowerdir=/s/l/top:/s/l/base,upperdir=/s/c/u,workdir=/s/c/w"
    with pytest.raises(RootfsError, match=r"overlay layer path '/state:x/l': must be "
                       r"absolute without ',', ':' or"):
        overlay_options(["/state:x/l"], "/u", "/w")
    with pytest.raises(RootfsError, match=r"overlay layer path 'rel': must be absolute"):
        overlay_options(["rel"], "/u", "/w")
    many = [f"/var/lib/governor/images/layers/{i:064x}" for i in range(60)]
    with pytest.raises(RootfsError, match=rf"overlay mount options for 60 layers are \d+ "
                       rf"bytes, more than the kernel's {MAX_MOUNT_DATA}"):
        overlay_options(many, "/u", "/w")


def test_namespaces_with_an_image() -> None:
    assert namespaces(None) == IMAGE_NAMESPACES
    assert namespaces("pid,net") == "pid,net,mount"  # the image needs its mount ns
    assert namespaces("pid,mount,uts,ipc,net,cgroup,user") == \
        "pid,mount,uts,ipc,net,cgroup,user"
    assert parse_unshare("cgroup,user") == 0x02000000 | 0x10000000
    with pytest.raises(LaunchError, match=r"unknown namespace 'time'; use pid, mount, uts, "
                       r"ipc, net, cgroup, user"):
        parse_unshare("time")


def test_plan_stacks_the_store_layers_top_first(tmp_path: Path) -> None:
    store = ImageStore(str(tmp_path))
    base, top = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    img = ImageRecord("shop", "v2", "sha256:" + "c" * 64, "/src", "2026-01-01T00:00:00+00:00",
                      {"Env": ["PATH=/bin", "A=1"], "WorkingDir": "/srv",
                       "Entrypoint": ["/bin/app"], "Cmd": ["--default"], "User": "app"},
                      [base, top], "amd64")
    dirs = ContainerDirs.create(str(tmp_path), "c1")
    assert oct(Path(dirs.upper).stat().st_mode & 0o777) == "0o755"
    argv, rootfs = plan(img, store, dirs, ["--other"], user=None, env={"B": "2"},
                        caller={"TERM": "vt100", "SECRET": "x"})
    assert argv == ["/bin/app", "--other"]
    assert rootfs.lowers == (f"{tmp_path}/images/layers/{'b' * 64}",
                             f"{tmp_path}/images/layers/{'a' * 64}")
    assert (rootfs.upper, rootfs.work, rootfs.merged) == (
        f"{tmp_path}/containers/c1/upper", f"{tmp_path}/containers/c1/work",
        f"{tmp_path}/containers/c1/rootfs")
    assert (rootfs.workdir, rootfs.user, rootfs.user_source) == ("/srv", "app", "config.User")
    assert dict(rootfs.image_env) == {"PATH": "/bin", "A": "1"}
    assert dict(rootfs.caller_env) == {"TERM": "vt100"}  # the allow-list only
    _, over = plan(img, store, dirs, [], user="0", env={}, caller={})
    assert (over.user, over.user_source) == ("0", "--user")
    dirs.remove(keep_upper=True)
    assert sorted(p.name for p in Path(dirs.root).iterdir()) == ["upper"]
    dirs.remove(keep_upper=False)
    assert not Path(dirs.root).exists()


def test_container_dir_error_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "containers").write_text("not a directory")
    with pytest.raises(LaunchError, match=rf"cannot create the container directory "
                       rf"{tmp_path}/containers/c1: \[(ENOTDIR|EEXIST)\]"):
        ContainerDirs.create(str(tmp_path), "c1")


def test_mount_points_symlinks_and_files_of_the_image_refused(tmp_path: Path) -> None:
    """A mount point the image has as a symlink (``/proc -> /etc``) or a file would send
    governor's mount elsewhere: refused naming it; a missing one is created."""
    from governor.placement.rootfs import mount_point

    (tmp_path / "proc").symlink_to("/etc")
    (tmp_path / "dev").write_text("")
    with pytest.raises(RootfsError, match=rf"the image's {tmp_path}/proc is a symlink: "
                       r"governor mounts its own there and needs a directory: \[ENOTDIR\]"):
        mount_point(str(tmp_path / "proc"))
    with pytest.raises(RootfsError, match=r"/dev is not a directory"):
        mount_point(str(tmp_path / "dev"))
    mount_point(str(tmp_path / "sys"), 0o555)
    assert (tmp_path / "sys").is_dir()
    err = RootfsError(2, "mknod /dev/null c 1 3")
    assert (err.errno, err.strerror) == (2, "mknod /dev/null c 1 3: [ENOENT] No such file or "
                                            "directory")


@pytest.mark.parametrize(("args", "message"), [
    (["--keep", "--", "true"], "--keep is for a container of an image (--image)"),
    ([], "no command given: governor launch ... -- CMD [ARGS...]"),
    (["--image", "Bad:Name"], "name 'Bad' is not valid"),
])
def test_launch_cli_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 args: list[str], message: str) -> None:
    from governor.cli import main

    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[governor]\nstate_dir = "{tmp_path}/state"\n')
    code = main(["launch", "--config", str(cfg), "-t", "t", "-g", "g", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err


def test_sweep_removes_only_what_a_killed_launch_left(tmp_path: Path) -> None:
    """A directory with work/ and no live record (its launch was SIGKILLed) goes; a
    --keep'd one (upper/ only) and a running one (a live record) stay."""
    from governor.image import inuse
    from governor.placement.container import sweep

    store = ImageStore(str(tmp_path))
    for cid in ("stale", "kept", "running"):
        ContainerDirs.create(str(tmp_path), cid)
    ContainerDirs(str(tmp_path / "containers" / "kept"), "", str(tmp_path / "containers" /
                  "kept" / "work"), str(tmp_path / "containers" / "kept" / "rootfs")
                  ).remove(keep_upper=True)
    os.makedirs(store.containers_dir)
    me = os.getpid()
    inuse.write_record(store.containers_dir, inuse.ContainerRecord(
        "running", "shop:v2", "sha256:" + "c" * 64, [], me, inuse.start_time(me),
        "2026-01-01T00:00:00+00:00"))
    inuse.write_record(store.containers_dir, inuse.ContainerRecord(
        "stale", "shop:v2", "sha256:" + "c" * 64, [], me, 1, "2026-01-01T00:00:00+00:00"))
    assert sweep(str(tmp_path), store) == ["stale"]
    assert sorted(os.listdir(tmp_path / "containers")) == ["kept", "running"]
    assert sweep(str(tmp_path / "nowhere"), store) == []
