"""Issue 15 item 4: what ``governor launch`` hands the command.  The environment builder and
the ``--env`` parser are pure; the launch itself runs for real on the host (a fake cgroupfs
takes the group write; fork, setsid, setuid and exec are the kernel's), as root.  The same
check through the CLI on a real cgroup v2 kernel is in tests/kernel/test_placement_kernel.py.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from governor.cgroupfs.files import CgroupFS
from governor.placement.identity import (
    ROOT_PATH,
    USER_PATH,
    LaunchError,
    User,
    launch_env,
    parse_env_options,
    resolve_user,
)
from governor.placement.launch import launch

NOBODY = User("nobody", 65534, 65534, (65534,), "/nonexistent", "/usr/sbin/nologin")
ROOT = User("root", 0, 0, (0,), "/root", "/bin/bash")
CALLER = {
    "GOVERNOR_DATABASE": "postgresql://gov:s3cret@db/gov", "AWS_SECRET_ACCESS_KEY": "k",
    "PATH": "/tmp/evil:/usr/bin", "LD_PRELOAD": "/tmp/evil.so", "HOME": "/root",
    "USER": "root", "SUDO_USER": "alice", "SSH_AUTH_SOCK": "/tmp/agent",
    "TERM": "xterm-256color", "LANG": "C.UTF-8", "LC_TIME": "en_GB.UTF-8", "TZ": "UTC",
}


@pytest.mark.parametrize(("user", "explicit", "want"), [
    (NOBODY, None, {"TERM": "xterm-256color", "LANG": "C.UTF-8", "LC_TIME": "en_GB.UTF-8",
                    "TZ": "UTC", "HOME": "/nonexistent", "USER": "nobody",
                    "LOGNAME": "nobody", "SHELL": "/usr/sbin/nologin", "PATH": USER_PATH}),
    (ROOT, None, {"TERM": "xterm-256color", "LANG": "C.UTF-8", "LC_TIME": "en_GB.UTF-8",
                  "TZ": "UTC", "HOME": "/root", "USER": "root", "LOGNAME": "root",
                  "SHELL": "/bin/bash", "PATH": ROOT_PATH}),
    # what the caller passes by name wins, PATH included
    (NOBODY, {"APP_MODE": "prod", "PATH": "/opt/app/bin"},
     {"TERM": "xterm-256color", "LANG": "C.UTF-8", "LC_TIME": "en_GB.UTF-8", "TZ": "UTC",
      "HOME": "/nonexistent", "USER": "nobody", "LOGNAME": "nobody",
      "SHELL": "/usr/sbin/nologin", "PATH": "/opt/app/bin", "APP_MODE": "prod"}),
    (None, None, {"TERM": "xterm-256color", "LANG": "C.UTF-8", "LC_TIME": "en_GB.UTF-8",
                  "TZ": "UTC", "PATH": ROOT_PATH}),
])
def test_launch_hardening_env_is_an_allow_list(user: User | None,
                                               explicit: dict[str, str] | None,
                                               want: dict[str, str]) -> None:
    assert launch_env(CALLER, user, explicit) == want


@pytest.mark.parametrize(("items", "want"), [
    (["A=1", "B=", "C=x=y"], {"A": "1", "B": "", "C": "x=y"}),
    (["TERM", "UNSET_HERE"], {"TERM": "xterm-256color"}),  # by name: copied when set
    (["GOVERNOR_DATABASE"], {"GOVERNOR_DATABASE": "postgresql://gov:s3cret@db/gov"}),
])
def test_launch_hardening_env_options(items: list[str], want: dict[str, str]) -> None:
    assert parse_env_options(items, CALLER) == want


@pytest.mark.parametrize("item", ["=1", "1A=x", "A-B=1", "", "A=\0"])
def test_launch_hardening_env_options_refused(item: str) -> None:
    with pytest.raises(LaunchError, match="--env"):
        parse_env_options([item], CALLER)


def test_launch_hardening_user_has_shell_and_own_groups() -> None:
    u = resolve_user("nobody")
    pw = pwd.getpwnam("nobody")
    assert (u.shell, u.groups) == (pw.pw_shell, tuple(os.getgrouplist("nobody", pw.pw_gid)))


@pytest.mark.skipif(os.geteuid() != 0, reason="launching as another user needs root")
def test_launch_hardening_as_nobody_leaks_nothing(tmp_path: Path,
                                                  capfd: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    g = tmp_path / "cg" / "t" / "g"
    g.mkdir(parents=True)
    (g / "cgroup.procs").write_text("")
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    monkeypatch.setenv("GOVERNOR_DATABASE", "postgresql://gov:s3cret@db/gov")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    leaked = os.open(secret, os.O_RDONLY)  # inheritable, as a caller's open file would be
    os.set_inheritable(leaked, True)
    tmp_path.chmod(0o755)
    # ls as a simple command: the shell holds no pipe of its own while it runs
    script = ('ls /proc/$$/fd; echo "fds end"; '
              'echo "id: $(id -u) $(id -g) $(id -G)"; '
              'echo "sid: $(ps -o sid= -p $$ | tr -d " ") pid: $$"; '
              'echo "tty: $(ps -o tty= -p $$ | tr -d " ")"; '
              'cat /proc/$$/status | grep -E "^(NoNewPrivs|CapEff)"; echo "env:"; env')
    try:
        with CgroupFS(tmp_path / "cg", verify=False) as fs:
            code = launch(fs, "t/g", ["sh", "-c", script], user="nobody",
                          env={"APP_MODE": "prod"})
    finally:
        os.close(leaked)
    out = capfd.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    fds = lines[:lines.index("fds end")]
    assert sorted(fds) == ["0", "1", "2"], out  # the open secret is not inherited
    lines = lines[lines.index("fds end"):]
    assert lines[1] == "id: 65534 65534 65534", out  # none of root's groups
    sid, pid = lines[2].removeprefix("sid: ").split(" pid: ")
    assert sid == pid, out  # a session of its own: no TIOCSTI into our terminal
    assert lines[3] == "tty: ?", out
    assert "NoNewPrivs:\t1" in lines and "CapEff:\t0000000000000000" in lines, out
    env = dict(line.split("=", 1) for line in lines[lines.index("env:") + 1:])
    env.pop("PWD", None)  # the shell sets it
    assert "s3cret" not in out
    assert set(env) <= {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "APP_MODE", "TERM",
                        "LANG", "LANGUAGE", "COLORTERM", "TZ", "SHLVL", "_"} | {
                            k for k in env if k.startswith("LC_")}, env
    assert (env["PATH"], env["USER"], env["APP_MODE"]) == (USER_PATH, "nobody", "prod")
    assert (g / "cgroup.procs").read_text().strip() == pid


def test_launch_hardening_env_option_usage_error() -> None:
    from click.testing import CliRunner

    from governor.cli import main_group

    r = CliRunner().invoke(main_group, ["launch", "-t", "a", "-g", "b", "--env", "1A=x", "--",
                                  "true"])
    assert r.exit_code == 2
    assert "'1A' is not a variable name" in r.output
