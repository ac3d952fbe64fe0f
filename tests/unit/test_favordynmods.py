"""``[placement] favordynmods``: option merging, the remount's flags and data, the check of
mountinfo afterwards, the errors, the config key, the daemon's start-up step and doctor.

The remount is a fake that answers as cgroup2's reconfigure does: the root flags become
exactly the ones named (apply_cgroup_root_flags), shown in the kernel's own order
(cgroup_show_options), with "rw"/"ro" first.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest

from governor.cgroupfs import mount, parse
from governor.cgroupfs.mount import (
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_RELATIME,
    MS_REMOUNT,
    cgroup2_mount_of,
    favor_dynmods,
    kernel_version,
    merge_options,
    remount_cgroup2,
    remount_fix,
    remount_flags,
)
from governor.config import load_config
from governor.daemon import apply_favordynmods
from governor.doctor import Check, _favordynmods_check, render
from governor.errors import ConfigError, MountError, NotCgroup2Error
from tests.unit.test_parse import HYBRID_MOUNTINFO

# a Debian 12 host booted with systemd (Linux 6.1), trimmed: the cgroup2 line is verbatim
HOST_MOUNTINFO = """\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
24 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 \
rw,nsdelegate,memory_recursiveprot
36 24 0:31 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:10 - pstore pstore rw
"""
CGROUP2_LINE = HOST_MOUNTINFO.splitlines()[2]

#: the order cgroup_show_options prints the root flags in (kernel/cgroup/cgroup.c)
KERNEL_ORDER = ("nsdelegate", "favordynmods", "memory_localevents", "memory_recursiveprot",
                "memory_hugetlb_accounting")


class FakeKernel:
    """mount(2) MS_REMOUNT on a mountinfo file: rewrites the cgroup2 line's super options.

    ``mode``: "ok" (as the kernel), "einval"/"eperm" (refuses), "noop" (accepts, changes
    nothing: a remount from a non-initial cgroup namespace), "drop" (loses nsdelegate).
    """

    def __init__(self, mountinfo: Path, mode: str = "ok") -> None:
        self.mountinfo = mountinfo
        self.mode = mode
        self.calls: list[tuple[str, int, str]] = []

    def __call__(self, target: str, flags: int, data: str) -> None:
        self.calls.append((target, flags, data))
        if self.mode == "einval":
            raise OSError(errno.EINVAL, "Invalid argument", target)
        if self.mode == "eperm":
            raise OSError(errno.EPERM, "Operation not permitted", target)
        if self.mode == "noop":
            return
        given = [o for o in data.split(",") if o]
        if self.mode == "drop":
            given = [o for o in given if o != "nsdelegate"]
        shown = ["ro" if flags & MS_RDONLY else "rw", *[o for o in KERNEL_ORDER if o in given]]
        lines = []
        for line in self.mountinfo.read_text().splitlines():
            left, _, right = line.partition(" - ")
            rf = right.split(" ")
            if rf[0] == "cgroup2" and left.split(" ")[4] == target:
                lines.append(f"{left} - {rf[0]} {rf[1]} {','.join(shown)}")
            else:
                lines.append(line)
        self.mountinfo.write_text("\n".join(lines) + "\n")


@pytest.fixture(autouse=True)
def no_real_remount(monkeypatch: pytest.MonkeyPatch) -> None:
    """A guard: nothing here may remount the host's cgroup hierarchy (mount(2) is only ever
    the fake's, passed in; doctor has no remount at all)."""
    def refuse(target: str, flags: int, data: str) -> None:
        pytest.fail(f"real mount(2) called: {target} {flags:#x} {data}")
    monkeypatch.setattr(mount, "sys_remount", refuse)


@pytest.fixture
def mountinfo(tmp_path: Path) -> Path:
    p = tmp_path / "mountinfo"
    p.write_text(HOST_MOUNTINFO)
    return p


def cgroup2(mi: Path) -> parse.MountEntry:
    return cgroup2_mount_of("/sys/fs/cgroup", mi)


# -- parsing and merging ---------------------------------------------------------------------

def test_mountinfo_per_mount_and_super_options() -> None:
    (m,) = parse.parse_mountinfo(CGROUP2_LINE)
    assert m.mount_options == ("rw", "nosuid", "nodev", "noexec", "relatime")
    assert m.super_options == ("rw", "nsdelegate", "memory_recursiveprot")


@pytest.mark.parametrize(("current", "add", "drop", "expected"), [
    (("rw", "nsdelegate", "memory_recursiveprot"), ["favordynmods"], [],
     ("nsdelegate", "memory_recursiveprot", "favordynmods")),
    (("rw",), ["favordynmods"], [], ("favordynmods",)),
    (("rw", "nsdelegate", "favordynmods"), ["favordynmods"], [],
     ("nsdelegate", "favordynmods")),                       # no duplicate
    (("rw", "nsdelegate", "favordynmods", "memory_localevents"), [], ["favordynmods"],
     ("nsdelegate", "memory_localevents")),                 # the restore
    (("ro", "nsdelegate"), [], [], ("nsdelegate",)),        # ro travels as MS_RDONLY
])
def test_merge_options(current: tuple[str, ...], add: list[str], drop: list[str],
                       expected: tuple[str, ...]) -> None:
    assert merge_options(current, add=add, drop=drop) == expected


@pytest.mark.parametrize(("line", "flags"), [
    (CGROUP2_LINE, MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RELATIME),
    # the sandbox guest's mount (governor/sandbox/guest-init.sh)
    ("27 24 0:24 / /sys/fs/cgroup rw,relatime shared:4 - cgroup2 cgroup2 "
     "rw,nsdelegate,memory_recursiveprot", MS_REMOUNT | MS_RELATIME),
    # a container's read-only cgroup2 (docker without --privileged)
    ("840 838 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup "
     "ro,nsdelegate", MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RELATIME),
])
def test_remount_keeps_per_mount_flags(line: str, flags: int) -> None:
    (m,) = parse.parse_mountinfo(line)
    assert remount_flags(m) == flags


@pytest.mark.parametrize(("release", "version"), [
    ("6.1.0-18-amd64", (6, 1)), ("5.10.0-28-cloud-amd64", (5, 10)), ("6.18.44-fc", (6, 18)),
    ("unknown", None),
])
def test_kernel_version(release: str, version: tuple[int, int] | None) -> None:
    assert kernel_version(release) == version


def test_mount_of_a_group_below_the_mount(mountinfo: Path) -> None:
    assert cgroup2_mount_of("/sys/fs/cgroup/governor.slice/acme", mountinfo).mount_id == 35
    with pytest.raises(NotCgroup2Error, match="/sys/fs/cgroup-other"):
        cgroup2_mount_of("/sys/fs/cgroup-other", mountinfo)


def test_no_cgroup2_mount(tmp_path: Path) -> None:
    mi = tmp_path / "mountinfo"
    mi.write_text(HYBRID_MOUNTINFO)  # cgroup2 only at /sys/fs/cgroup/unified
    with pytest.raises(NotCgroup2Error, match="no cgroup2 mount"):
        favor_dynmods("/sys/fs/cgroup", mountinfo=mi, remount=FakeKernel(mi))


# -- favor_dynmods ---------------------------------------------------------------------------

def test_turns_it_on_keeping_every_option(mountinfo: Path) -> None:
    kernel = FakeKernel(mountinfo)
    assert favor_dynmods("/sys/fs/cgroup", mountinfo=mountinfo, remount=kernel) is True
    assert kernel.calls == [("/sys/fs/cgroup",
                             MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RELATIME,
                             "nsdelegate,memory_recursiveprot,favordynmods")]
    after = cgroup2(mountinfo)
    assert after.super_options == ("rw", "nsdelegate", "favordynmods", "memory_recursiveprot")
    assert after.mount_options == ("rw", "nosuid", "nodev", "noexec", "relatime")
    # the other mounts are untouched
    assert mountinfo.read_text().splitlines()[3] == HOST_MOUNTINFO.splitlines()[3]


def test_already_on_does_nothing(mountinfo: Path) -> None:
    kernel = FakeKernel(mountinfo)
    favor_dynmods("/sys/fs/cgroup/governor.slice", mountinfo=mountinfo, remount=kernel)
    before = mountinfo.read_text()
    again = FakeKernel(mountinfo)
    assert favor_dynmods("/sys/fs/cgroup", mountinfo=mountinfo, remount=again) is False
    assert again.calls == [] and mountinfo.read_text() == before


def test_restore_with_the_original_options(mountinfo: Path) -> None:
    favor_dynmods("/sys/fs/cgroup", mountinfo=mountinfo, remount=FakeKernel(mountinfo))
    kernel = FakeKernel(mountinfo)
    after = remount_cgroup2("/sys/fs/cgroup", ("rw", "nsdelegate", "memory_recursiveprot"),
                            mountinfo=mountinfo, remount=kernel)
    assert kernel.calls[0][2] == "nsdelegate,memory_recursiveprot"
    assert after.super_options == ("rw", "nsdelegate", "memory_recursiveprot")
    assert mountinfo.read_text() == HOST_MOUNTINFO


def test_old_kernel_refuses(mountinfo: Path) -> None:
    with pytest.raises(MountError) as ei:
        favor_dynmods("/sys/fs/cgroup", mountinfo=mountinfo,
                      remount=FakeKernel(mountinfo, "einval"))
    msg = str(ei.value)
    assert msg.startswith("/sys/fs/cgroup: remount -o remount,nosuid,nodev,noexec,relatime,"
                          "nsdelegate,memory_recursiveprot,favordynmods: [EINVAL] ")
    assert "Linux 6.0+" in msg and ei.value.errno == errno.EINVAL
    assert isinstance(ei.value.__cause__, OSError)
    assert mountinfo.read_text() == HOST_MOUNTINFO  # nothing changed


@pytest.mark.parametrize(("err", "release", "words"), [
    (errno.EINVAL, "5.10.0-28-amd64", "favordynmods needs Linux 6.0+ (this kernel: 5.10.0-28"),
    (errno.EINVAL, "6.1.0-18-amd64", "dmesg"),
    (errno.EPERM, "6.1.0-18-amd64", "as root"),
    (errno.EBUSY, "6.1.0-18-amd64", "needs Linux 6.0+ (this kernel: 6.1.0-18-amd64) and root"),
])
def test_remount_fix(err: int, release: str, words: str) -> None:
    assert words in remount_fix(err, release)


def test_not_root(mountinfo: Path) -> None:
    with pytest.raises(MountError, match=r"\[EPERM\].*Fix: run the daemon as root"):
        favor_dynmods("/sys/fs/cgroup", mountinfo=mountinfo,
                      remount=FakeKernel(mountinfo, "eperm"))


def test_accepted_but_not_applied(mountinfo: Path) -> None:
    with pytest.raises(MountError) as ei:
        favor_dynmods("/sys/fs/cgroup", mountinfo=mountinfo,
                      remount=FakeKernel(mountinfo, "noop"))
    assert ei.value.errno is None
    assert "does not show favordynmods" in str(ei.value)
    assert "initial cgroup namespace" in ei.value.fix


def test_an_option_lost_is_an_error(mountinfo: Path) -> None:
    with pytest.raises(MountError, match="dropped nsdelegate") as ei:
        favor_dynmods("/sys/fs/cgroup", mountinfo=mountinfo,
                      remount=FakeKernel(mountinfo, "drop"))
    assert ("mount -o remount,nsdelegate,memory_recursiveprot,favordynmods /sys/fs/cgroup"
            in ei.value.fix)


# -- configuration ---------------------------------------------------------------------------

def test_config_key(tmp_path: Path) -> None:
    assert load_config(None, environ={}, missing_ok=True).favordynmods is False
    p = tmp_path / "config.toml"
    p.write_text("[placement]\nfavordynmods = true\n")
    assert load_config(p, environ={}).favordynmods is True


@pytest.mark.parametrize("value", ['"yes"', "1", '"true"'])
def test_config_key_wrong_type(tmp_path: Path, value: str) -> None:
    p = tmp_path / "config.toml"
    p.write_text(f"[placement]\nfavordynmods = {value}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={})
    assert str(ei.value).startswith(f"{p}: placement.favordynmods: ")
    assert "is not a boolean; use true or false" in str(ei.value)


# -- the daemon's start-up step --------------------------------------------------------------

def test_daemon_off_does_nothing(mountinfo: Path) -> None:
    kernel = FakeKernel(mountinfo)
    cfg = load_config(None, environ={}, missing_ok=True)
    assert apply_favordynmods(cfg, "/sys/fs/cgroup", mountinfo=mountinfo,
                              remount=kernel) is False
    assert kernel.calls == []


def test_daemon_turns_it_on_and_logs_once(mountinfo: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config(None, environ={}, missing_ok=True,
                      overrides={"placement.favordynmods": True})
    with caplog.at_level(logging.DEBUG, logger="governor.daemon"):
        assert apply_favordynmods(cfg, "/sys/fs/cgroup", mountinfo=mountinfo,
                                  remount=FakeKernel(mountinfo)) is True
        assert apply_favordynmods(cfg, "/sys/fs/cgroup", mountinfo=mountinfo,
                                  remount=FakeKernel(mountinfo)) is True
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1 and "favordynmods turned on" in infos[0].getMessage()


def test_daemon_logs_a_refusal_and_goes_on(mountinfo: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config(None, environ={}, missing_ok=True,
                      overrides={"placement.favordynmods": True})
    with caplog.at_level(logging.INFO, logger="governor.daemon"):
        assert apply_favordynmods(cfg, "/sys/fs/cgroup", mountinfo=mountinfo,
                                  remount=FakeKernel(mountinfo, "einval")) is False
    (rec,) = caplog.records
    assert rec.levelno == logging.ERROR and "placement works" in rec.getMessage()
    assert "[EINVAL]" in rec.__dict__["error"] and "Fix" not in rec.__dict__["error"]
    assert "Linux 6.0+" in rec.__dict__["fix"]


# -- doctor ----------------------------------------------------------------------------------

def _doctor(mi: Path, *, on: bool = False, rules: int | None = 3,
            release: str = "6.1.0-18-amd64", keep_warm: float = 1.0) -> Check:
    cfg = load_config(None, environ={}, missing_ok=True,
                      overrides={"placement.favordynmods": on,
                                 "placement.keep_warm": keep_warm})
    return _favordynmods_check(cfg, Path("/sys/fs/cgroup"), str(mi), rules, release)


def test_doctor_off_with_rules_suggests_it(mountinfo: Path) -> None:
    c = _doctor(mountinfo)
    assert c.ok and c.info and not c.required  # informational: never a failure
    assert "/sys/fs/cgroup is mounted without it" in c.detail and "RCU grace period" in c.detail
    assert "keep_warm spares the moves within 1 s of another" in c.detail
    assert "while at least 20 come within a second" in c.detail
    assert c.fix.startswith("`[placement] favordynmods = true` (Linux 6.0+) cuts that wait")
    lines: list[str] = []
    render([c], lines.append)
    assert lines[0].startswith("[INFO] favordynmods: /sys/fs/cgroup is mounted without it")
    assert lines[1].startswith("       hint: `[placement] favordynmods = true` (Linux 6.0+)")
    assert lines[2] == "doctor: all checks passed"


def test_doctor_off_says_what_keep_warm_does(mountinfo: Path) -> None:
    c = _doctor(mountinfo, keep_warm=0)
    assert "keep_warm = 0 every move waits" in c.detail and c.info


def test_doctor_on(mountinfo: Path) -> None:
    favor_dynmods("/sys/fs/cgroup", mountinfo=mountinfo, remount=FakeKernel(mountinfo))
    c = _doctor(mountinfo)
    assert c.ok and not c.info and "has it" in c.detail and not c.fix
    lines: list[str] = []
    render([c], lines.append)
    assert lines[0].startswith("[OK  ] favordynmods: /sys/fs/cgroup has it")


@pytest.mark.parametrize(("kw", "ok", "words", "fix"), [
    ({"rules": 0}, True, "no placement rules", ""),
    ({"release": "5.10.0-28-amd64"}, True, "predates the option (Linux 6.0+)", ""),
    ({"on": True}, True, "`governor run` turns it on at start", ""),
    ({"on": True, "release": "5.10.0-28-amd64"}, False, "will log an error",
     "set [placement] favordynmods = false"),
])
def test_doctor_cases(mountinfo: Path, kw: dict[str, object], ok: bool, words: str,
                      fix: str) -> None:
    c = _doctor(mountinfo, **kw)  # type: ignore[arg-type]
    assert c.ok is ok and not c.required and words in c.detail and c.fix.startswith(fix)


def test_doctor_never_remounts(mountinfo: Path) -> None:
    # even with the setting on, doctor only reads (the autouse guard fails on mount(2))
    assert _doctor(mountinfo, on=True).ok
    assert mountinfo.read_text() == HOST_MOUNTINFO
