"""The pure parts of the sandbox harness: QEMU command line, guest scripts, initramfs
pieces, junit counting, and the kernel-marker rules of tests/conftest.py."""

from __future__ import annotations

import json
import lzma
import os
import shutil
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from governor.sandbox import junit
from governor.sandbox.cache import CACHE_FORMAT, Cache, default_cache_dir, initramfs_digest
from governor.sandbox.detect import is_cgroup2_mount, statfs_type
from governor.sandbox.errors import SandboxError, SandboxNotReady
from governor.sandbox.guest import command_script, guest_config, tmp_keep
from governor.sandbox.initramfs import (
    CpioEntry,
    SandboxBuildError,
    cpio_newc,
    elf_is_static,
    extract_vmlinux,
    load_order,
    module_name,
    parse_modules_dep,
)
from governor.sandbox.qemu import BootSpec, qemu_argv
from governor.sandbox.run import exec_
from governor.sandbox.systemd_mode import (
    SYSTEMD_CMDLINE,
    SYSTEMD_KEPT_GENERATORS,
    SYSTEMD_MASKED,
    SYSTEMD_SERVICE,
    SYSTEMD_TARGET,
    host_generators,
    systemd_service_script,
    systemd_units,
    write_systemd_files,
)

TESTS = Path(__file__).resolve().parents[1]


def _spec(tmp_path: Path, **kw: object) -> BootSpec:
    base: dict[str, object] = {
        "qemu": "qemu-system-x86_64",
        "vmlinux": tmp_path / "vmlinux",
        "initramfs": tmp_path / "initramfs.img",
        "workdir": tmp_path / "run",
    }
    base.update(kw)
    return BootSpec(**base)  # type: ignore[arg-type]


def _opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


# --------------------------------------------------------------------------- qemu argv


def test_qemu_argv_is_tcg_only_and_sized(tmp_path: Path) -> None:
    argv = qemu_argv(_spec(tmp_path, mem_mb=2048, cpus=3))
    assert _opt(argv, "-accel") == ["tcg,thread=multi"]
    assert not any("kvm" in a for a in argv)
    assert _opt(argv, "-m") == ["2048"]
    assert _opt(argv, "-smp") == ["3"]
    assert _opt(argv, "-kernel") == [str(tmp_path / "vmlinux")]
    assert "-no-reboot" in argv
    # host root read-only, the run directory read-write, no network, no disk by default
    fsdevs = _opt(argv, "-fsdev")
    assert fsdevs[0].startswith("local,id=fsroot,path=/,") and "readonly=on" in fsdevs[0]
    assert "readonly" not in fsdevs[1] and f"path={tmp_path / 'run'}," in fsdevs[1]
    assert _opt(argv, "-netdev") == []
    assert _opt(argv, "-drive") == []
    append = _opt(argv, "-append")[0]
    assert "quiet" in append and "console=ttyS0" in append and "panic=-1" in append


def test_qemu_argv_rwdirs_disk_ports_and_escaping(tmp_path: Path) -> None:
    odd = Path("/srv/a,b")
    spec = _spec(
        tmp_path,
        rwdirs=(Path("/srv/results"), odd),
        disk=tmp_path / "disk.img",
        port_forwards=((18000, 9100), (18001, 80)),
        verbose=True,
        append="foo=1",
    )
    argv = qemu_argv(spec)
    fsdevs = _opt(argv, "-fsdev")
    assert "local,id=fsrw0,path=/srv/results,security_model=none,multidevs=remap" in fsdevs
    # a comma in a path is doubled, or QEMU would read the rest as another option
    assert "local,id=fsrw1,path=/srv/a,,b,security_model=none,multidevs=remap" in fsdevs
    devices = _opt(argv, "-device")
    assert "virtio-9p-pci,fsdev=fsrw0,mount_tag=rw0" in devices
    assert "virtio-9p-pci,fsdev=fsrw1,mount_tag=rw1" in devices
    assert "virtio-blk-pci,drive=d0" in devices
    assert _opt(argv, "-drive")[0].startswith(f"if=none,id=d0,file={tmp_path / 'disk.img'},")
    (netdev,) = _opt(argv, "-netdev")
    assert netdev == (
        "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:18000-10.0.2.15:9100"
        ",hostfwd=tcp:127.0.0.1:18001-10.0.2.15:80"
    )
    assert "virtio-net-pci,netdev=n0" in devices
    append = _opt(argv, "-append")[0]
    assert "quiet" not in append
    assert append.endswith(" foo=1")


@pytest.mark.parametrize(
    ("systemd", "verbose", "present", "absent"),
    [
        (False, False, ["quiet"], ["systemd.", "vmsystemd"]),
        (False, True, [], ["quiet", "systemd."]),
        (
            True, False,
            ["quiet", "systemd.unified_cgroup_hierarchy=1", f"systemd.unit={SYSTEMD_TARGET}",
             "systemd.firstboot=off"],
            ["systemd.show_status"],
        ),
        (True, True, [SYSTEMD_CMDLINE, "systemd.show_status=1"], ["quiet"]),
    ],
)
def test_qemu_argv_kernel_command_line_per_mode(
    tmp_path: Path, systemd: bool, verbose: bool, present: list[str], absent: list[str]
) -> None:
    argv = qemu_argv(_spec(tmp_path, systemd=systemd, verbose=verbose, append="x=1"))
    append = _opt(argv, "-append")[0]
    for word in present:
        assert word in append
    for word in absent:
        assert word not in append
    # the caller's additions stay last, so they can override
    assert append.endswith(" x=1")
    # the rest of the machine is the same in both modes
    bare = qemu_argv(_spec(tmp_path, verbose=verbose, append="x=1"))
    assert [a for a in argv if a != append] == [a for a in bare if a != _opt(bare, "-append")[0]]


# --------------------------------------------------------------------------- guest scripts


def _run_script(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    f = tmp_path / "cmd.sh"
    f.write_text(script)
    return subprocess.run(
        ["/usr/bin/env", "-i", "/bin/bash", str(f)], capture_output=True, text=True, check=False
    )


def test_command_script_quotes_every_argument(tmp_path: Path) -> None:
    nasty = ["a b", "it's", '"q"', "$HOME", "`id`", "x\ny", "*", "", "--"]
    script = command_script(
        [sys.executable, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", *nasty],
        cwd=tmp_path,
        env={},
        path=os.environ["PATH"],
        home="/root",
    )
    r = _run_script(script, tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == nasty


def test_command_script_env_cwd_and_exit_code(tmp_path: Path) -> None:
    work = tmp_path / "dir with space"
    work.mkdir()
    script = command_script(
        ["bash", "-c", 'echo "$PWD|$FOO|$GOVERNOR_SANDBOX|$LANG|$HOME"; exit 7'],
        cwd=work,
        env={"FOO": "a 'b' $c", "GOVERNOR_SANDBOX": "0"},
        path=os.environ["PATH"],
        home="/home/x",
    )
    r = _run_script(script, tmp_path)
    assert r.returncode == 7
    # the sandbox marker cannot be overridden by the caller's env
    assert r.stdout.strip() == f"{work}|a 'b' $c|1|C.UTF-8|/home/x"


def test_command_script_falls_back_to_root_when_cwd_is_missing(tmp_path: Path) -> None:
    script = command_script(
        ["pwd"], cwd=tmp_path / "gone", env={}, path=os.environ["PATH"], home="/root"
    )
    r = _run_script(script, tmp_path)
    assert r.returncode == 0
    assert r.stdout.strip() == "/"
    assert "cannot enter" in r.stderr


def test_command_script_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="invalid environment variable name"):
        command_script(["true"], cwd=tmp_path, env={"A-B": "1"}, path="/bin", home="/")
    with pytest.raises(SandboxError, match="no command"):
        command_script([], cwd=tmp_path, env={}, path="/bin", home="/")


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed")
def test_guest_config_is_read_back_by_busybox_sh(tmp_path: Path) -> None:
    cwd = Path("/work/it's here")
    config, rwdirs, keep = guest_config(
        cwd=cwd,
        modules_dir=Path("/cache/kernel/lib/modules"),
        net=True,
        rwdirs=[Path("/tmp/results"), Path("/srv/a b")],
        keep=["/tmp/clone"],
    )
    assert keep == "/tmp/clone\n"
    (tmp_path / "config").write_text(config)
    (tmp_path / "rwdirs").write_text(rwdirs)
    # the same reading the guest init does, with the same shell
    r = subprocess.run(
        [
            "busybox", "sh", "-c",
            '. ./config; printf "%s|%s|%s|%s\\n" '
            '"$VM_CWD" "$VM_MODULES_DIR" "$VM_NET" "$VM_TMPFS"; '
            'while read -r tag dir; do printf "%s=%s\\n" "$tag" "$dir"; done < rwdirs',
        ],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )
    assert r.stdout.splitlines() == [
        f"{cwd}|/cache/kernel/lib/modules|1|1",
        "rw0=/tmp/results",
        "rw1=/srv/a b",
    ]


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed")
@pytest.mark.parametrize(("systemd", "expected"), [(False, "0"), (True, "1")])
def test_guest_config_selects_the_init_mode(tmp_path: Path, systemd: bool, expected: str) -> None:
    config, _, _ = guest_config(
        cwd=Path("/"), modules_dir=Path("/m"), net=False, rwdirs=[], systemd=systemd
    )
    (tmp_path / "config").write_text(config)
    r = subprocess.run(
        ["busybox", "sh", "-c", '. ./config; echo "$VM_SYSTEMD $VM_SYSTEMD_BIN"'],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )
    assert r.stdout.split() == [expected, "/lib/systemd/systemd"]


def test_guest_config_rejects_paths_the_guest_cannot_read() -> None:
    for bad in (Path("/a\nb"), Path("/a "), Path("relative")):
        with pytest.raises(SandboxError):
            guest_config(cwd=Path("/"), modules_dir=Path("/m"), net=False, rwdirs=[bad])


def test_tmp_keep_names_the_top_directories_under_tmp(tmp_path: Path) -> None:
    # tmp_path is under /tmp/pytest-of-<user>/ when TMPDIR is unset, as in test.sh
    top = "/" + "/".join(tmp_path.parts[1:3])
    deep = tmp_path / "a" / "b"
    keep, tmpfs = tmp_keep([str(deep), "relative/x", "/usr/bin", f"{tmp_path}/../x",
                            "/tmp/definitely-not-there-4711/bin", str(tmp_path)])
    if top.startswith("/tmp/"):
        assert keep == [top]
    else:
        assert keep == []
    assert tmpfs
    assert tmp_keep(["/tmp", "/usr"]) == ([], False)
    assert tmp_keep(["/tmp/"]) == ([], False)


# --------------------------------------------------------------------------- systemd mode


def _unit_keys(text: str) -> dict[tuple[str, str], str]:
    """(section, key) -> value of a unit file (each key once in ours)."""
    out: dict[tuple[str, str], str] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            assert (section, k) not in out, f"{k} twice in [{section}]"
            out[section, k] = v
    return out


@pytest.mark.parametrize(
    ("unit", "section", "key", "value"),
    [
        (SYSTEMD_TARGET, "Unit", "Requires", SYSTEMD_SERVICE),
        (SYSTEMD_TARGET, "Unit", "After", SYSTEMD_SERVICE),
        (SYSTEMD_TARGET, "Unit", "AllowIsolate", "yes"),
        # off basic.target and multi-user.target: only sysinit, journald and D-Bus
        (SYSTEMD_SERVICE, "Unit", "DefaultDependencies", "no"),
        (SYSTEMD_SERVICE, "Unit", "Wants", "systemd-journald.socket dbus.socket dbus.service"),
        (SYSTEMD_SERVICE, "Unit", "After", "systemd-journald.socket dbus.socket"),
        (SYSTEMD_SERVICE, "Unit", "SuccessAction", "poweroff-force"),
        (SYSTEMD_SERVICE, "Unit", "FailureAction", "poweroff-force"),
        (SYSTEMD_SERVICE, "Service", "Type", "exec"),
        (SYSTEMD_SERVICE, "Service", "ExecStart", "/bin/bash /run/governor-sandbox/service.sh"),
        (SYSTEMD_SERVICE, "Service", "StandardInput", "null"),
        (SYSTEMD_SERVICE, "Service", "StandardOutput", "file:/dev/virtio-ports/vm.out"),
        (SYSTEMD_SERVICE, "Service", "StandardError", "file:/dev/virtio-ports/vm.err"),
        (SYSTEMD_SERVICE, "Service", "IgnoreSIGPIPE", "no"),
        (SYSTEMD_SERVICE, "Service", "OOMPolicy", "continue"),
        (SYSTEMD_SERVICE, "Service", "TasksMax", "infinity"),
        (SYSTEMD_SERVICE, "Service", "Delegate", "yes"),
    ],
)
def test_systemd_units(unit: str, section: str, key: str, value: str) -> None:
    units = systemd_units()
    assert sorted(units) == sorted([SYSTEMD_TARGET, SYSTEMD_SERVICE])
    assert _unit_keys(units[unit])[section, key] == value
    assert "basic.target" not in units[unit] and "multi-user" not in units[unit]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd not installed")
def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    for name, text in systemd_units().items():
        (tmp_path / name).write_text(text)
    r = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(tmp_path / n) for n in systemd_units())],
        capture_output=True, text=True, check=False, timeout=120,
    )
    # unknown keys and bad values are only warnings: any output is a problem
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


def _fake_systemctl(bindir: Path, state: str) -> None:
    bindir.mkdir()
    f = bindir / "systemctl"
    f.write_text(f'#!/bin/sh\n[ "$*" = "is-system-running --wait" ] && echo {state}\n')
    f.chmod(0o755)


@pytest.mark.parametrize(
    ("cmd", "state", "rc", "stdout", "logged"),
    [
        ('echo "hi $GOVERNOR_X|$(cat)|${INVOCATION_ID-unset}"; exit 7', "running", 7,
         "hi ||", "cmd-start (system running)"),
        ("true", "degraded", 0, "", "cmd-start (system degraded)"),
        ("kill -TERM $$", "", 143, "", "cmd-start (system still starting)"),
    ],
)
def test_systemd_service_script(
    tmp_path: Path, cmd: str, state: str, rc: int, stdout: str, logged: str
) -> None:
    run = tmp_path / "run dir"
    run.mkdir()
    (run / "cmd.sh").write_text(cmd + "\n")
    _fake_systemctl(tmp_path / "bin", state)
    console = tmp_path / "console"
    (tmp_path / "service.sh").write_text(
        systemd_service_script(str(run), boot_wait=5, console=str(console))
    )
    r = subprocess.run(
        ["/bin/bash", str(tmp_path / "service.sh")],
        env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "GOVERNOR_X": "leaked",
             "INVOCATION_ID": "x"},
        input="stdin is not passed on", capture_output=True, text=True, check=False,
    )
    assert r.returncode == rc
    # env -i and stdin /dev/null, as in the bare mode: nothing of the service leaks in
    if stdout:
        assert r.stdout == stdout + "unset\n"
    assert (run / "rc").read_text() == f"{rc}\n"
    assert not (run / "rc.tmp").exists()
    log = console.read_text()
    assert "unit-started" in log and logged in log and f"cmd-done rc={rc}" in log


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed")
def test_systemd_files_as_the_guest_init_copies_them(tmp_path: Path) -> None:
    work = tmp_path / "run"
    work.mkdir()
    gens = ["systemd-fstab-generator", "systemd-sysv-generator", "postgresql-generator",
            *SYSTEMD_KEPT_GENERATORS]
    write_systemd_files(work, gens)
    assert "is-system-running --wait" in (work / "service.sh").read_text()
    # the guest init's copy, with the same busybox: into an /etc that has content already
    etc = tmp_path / "etc"
    (etc / "systemd" / "system").mkdir(parents=True)
    (etc / "tmpfiles.d").mkdir()
    (etc / "hostname").write_text("host\n")
    for src, dst in (("systemd/units/.", etc / "systemd" / "system"), ("systemd/etc/.", etc)):
        subprocess.run(["busybox", "cp", "-a", src, str(dst)], cwd=work, check=True)
    system = etc / "systemd" / "system"
    assert (system / SYSTEMD_SERVICE).read_text() == systemd_units()[SYSTEMD_SERVICE]
    assert (system / SYSTEMD_TARGET).read_text() == systemd_units()[SYSTEMD_TARGET]
    masked = sorted(p.name for p in system.iterdir() if p.is_symlink())
    assert masked == sorted(SYSTEMD_MASKED)
    assert {os.readlink(system / m) for m in masked} == {"/dev/null"}
    assert os.readlink(etc / "tmpfiles.d" / "tmp.conf") == "/dev/null"
    generators = etc / "systemd" / "system-generators"
    assert sorted(p.name for p in generators.iterdir()) == sorted(
        g for g in gens if g not in SYSTEMD_KEPT_GENERATORS
    )
    assert {os.readlink(p) for p in generators.iterdir()} == {"/dev/null"}
    assert (etc / "hostname").read_text() == "host\n"


def test_host_generators(tmp_path: Path) -> None:
    for name in ("b-generator", "a-generator"):
        (tmp_path / name).touch()
    assert host_generators(tmp_path) == ["a-generator", "b-generator"]
    assert host_generators(tmp_path / "missing") == []


def test_guest_init_is_valid_shell() -> None:
    init = Path(__file__).resolve().parents[2] / "governor" / "sandbox" / "guest-init.sh"
    r = subprocess.run(["sh", "-n", str(init)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


# --------------------------------------------------------------------------- cache, exec


def test_exec_refuses_an_unprepared_cache(tmp_path: Path) -> None:
    with pytest.raises(SandboxNotReady, match="governor sandbox setup"):
        exec_(["true"], cache_dir=tmp_path)


def test_cache_is_stale_when_the_init_changes(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    (tmp_path / "vmlinux").write_bytes(b"\x7fELF")
    (tmp_path / "initramfs.img").write_bytes(b"x")
    (tmp_path / "kernel" / "lib" / "modules" / "6.1.0-1-amd64").mkdir(parents=True)
    stamp = {
        "format": CACHE_FORMAT,
        "kernel_release": "6.1.0-1-amd64",
        "initramfs_digest": initramfs_digest(),
    }
    (tmp_path / "stamp.json").write_text(json.dumps(stamp))
    assert cache.ready()
    (tmp_path / "stamp.json").write_text(json.dumps({**stamp, "initramfs_digest": "old"}))
    assert not cache.ready()
    assert cache.kernel_ready(cache.read_stamp())  # only the initramfs needs rebuilding
    (tmp_path / "stamp.json").write_text(json.dumps({**stamp, "format": CACHE_FORMAT + 1}))
    assert not cache.kernel_ready(cache.read_stamp())


# --------------------------------------------------------------------------- initramfs parts


def _parse_newc(data: bytes) -> list[tuple[str, int, bytes]]:
    out: list[tuple[str, int, bytes]] = []
    off = 0
    while True:
        assert data[off : off + 6] == b"070701"
        fields = [int(data[off + 6 + 8 * i : off + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = off + 110
        name = data[name_start : name_start + namesize - 1].decode()
        off = name_start + namesize
        off += -off % 4
        body = data[off : off + size]
        off += size
        off += -off % 4
        if name == "TRAILER!!!":
            assert off == len(data)
            return out
        out.append((name, mode, body))


def test_cpio_newc_round_trip() -> None:
    entries = [
        CpioEntry.directory("bin"),
        CpioEntry.file("bin/busybox", b"\x7fELF" + b"x" * 13, 0o755),
        CpioEntry.symlink("bin/sh", "busybox"),
        CpioEntry.file("init", b"#!/bin/sh\n", 0o755),
    ]
    data = cpio_newc(entries)
    assert len(data) % 4 == 0
    assert _parse_newc(data) == [
        ("bin", stat.S_IFDIR | 0o755, b""),
        ("bin/busybox", stat.S_IFREG | 0o755, b"\x7fELF" + b"x" * 13),
        ("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
        ("init", stat.S_IFREG | 0o755, b"#!/bin/sh\n"),
    ]
    assert cpio_newc(entries) == data  # deterministic


@pytest.mark.skipif(shutil.which("cpio") is None and shutil.which("busybox") is None,
                    reason="no cpio to cross-check with")
def test_cpio_newc_is_read_by_a_real_cpio(tmp_path: Path) -> None:
    data = cpio_newc([CpioEntry.directory("d"), CpioEntry.file("d/f", b"hello\n")])
    tool = ["cpio"] if shutil.which("cpio") else ["busybox", "cpio"]
    r = subprocess.run([*tool, "-t"], input=data, capture_output=True, check=True)
    assert r.stdout.decode().split() == ["d", "d/f"]


def _elf(interp: bool) -> bytes:
    # a 64-bit LE ELF header with two program headers: PT_LOAD and, maybe, PT_INTERP
    phoff, phentsize = 64, 56
    hdr = bytearray(64)
    hdr[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", hdr, 0x20, phoff)
    struct.pack_into("<HH", hdr, 0x36, phentsize, 2)
    ph = bytearray(phentsize * 2)
    struct.pack_into("<I", ph, 0, 1)
    struct.pack_into("<I", ph, phentsize, 3 if interp else 4)
    return bytes(hdr + ph)


def test_elf_is_static() -> None:
    assert elf_is_static(_elf(interp=False))
    assert not elf_is_static(_elf(interp=True))
    assert not elf_is_static(b"#!/bin/sh\n" + b"\0" * 100)


def test_extract_vmlinux_skips_false_magic() -> None:
    kernel = b"\x7fELF" + bytes(range(256)) * 40
    payload = lzma.compress(kernel, format=lzma.FORMAT_XZ)
    # a stray xz magic before the real payload must not fool it; trailing bytes are fine
    image = b"MZ" + b"\0" * 100 + b"\xfd7zXZ\x00garbage" + b"\0" * 50 + payload + b"\0" * 64
    assert extract_vmlinux(image) == kernel
    with pytest.raises(SandboxBuildError):
        extract_vmlinux(b"MZ" + b"\0" * 1000)


MODULES_DEP = """\
kernel/fs/9p/9p.ko: kernel/fs/netfs/netfs.ko kernel/net/9p/9pnet.ko
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko \
kernel/drivers/virtio/virtio.ko
kernel/net/9p/9pnet.ko:
kernel/fs/netfs/netfs.ko: kernel/fs/fscache/fscache.ko
kernel/fs/fscache/fscache.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net-failover.ko.xz:
"""


def test_module_load_order_puts_dependencies_first() -> None:
    deps = parse_modules_dep(MODULES_DEP)
    assert module_name("kernel/drivers/net/net-failover.ko.xz") == "net_failover"
    assert "net_failover" in deps
    order = load_order(["9pnet_virtio", "9p", "overlay"], deps, builtin=["kernel/fs/overlay.ko"])
    assert sorted(order) == sorted(set(order))
    pos = {Path(p).name: i for i, p in enumerate(order)}
    assert pos["virtio_ring.ko"] < pos["virtio.ko"] < pos["9pnet_virtio.ko"]
    assert pos["9pnet.ko"] < pos["9pnet_virtio.ko"]
    assert pos["fscache.ko"] < pos["netfs.ko"] < pos["9p.ko"]
    assert "overlay.ko" not in pos  # built in: nothing to load
    with pytest.raises(SandboxBuildError, match="neither built in"):
        load_order(["virtio_blk"], deps)


def test_module_dependency_cycle_is_reported() -> None:
    deps = parse_modules_dep("kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/a.ko\n")
    with pytest.raises(SandboxBuildError, match="cycle"):
        load_order(["a"], deps)


# --------------------------------------------------------------------------- detect


def test_statfs_type_and_cgroup2_detection() -> None:
    assert statfs_type("/proc") == 0x9FA0  # PROC_SUPER_MAGIC
    assert not is_cgroup2_mount("/proc")
    assert not is_cgroup2_mount("/nonexistent/path")
    with pytest.raises(OSError):
        statfs_type("/nonexistent/path")


# --------------------------------------------------------------------------- junit summary


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="2" tests="7">
<testcase classname="t" name="ok1" time="0.1"/>
<testcase classname="t" name="ok2" time="0.1"><system-out>x</system-out></testcase>
<testcase classname="t" name="bad"><failure message="assert 0">tb</failure></testcase>
<testcase classname="t" name="bad_teardown_too"><failure message="f"/><error message="e"/>
</testcase>
<testcase classname="" name="tests.kernel.test_broken"><error message="collection failure"/>
</testcase>
<testcase classname="t" name="sk"><skipped type="pytest.skip" message="no"/></testcase>
<testcase classname="t" name="xf"><skipped type="pytest.xfail" message="known"/></testcase>
</testsuite></testsuites>
"""


def test_junit_counts_each_testcase_once() -> None:
    c = junit.count_xml(JUNIT)
    assert (c.passed, c.failed, c.skipped, c.xfailed) == (2, 3, 1, 1)
    assert c.line("kernel") == "kernel: 2 passed, 3 failed, 2 skipped"
    assert junit.Counts(3, 0).line("all") == "all: 3 passed, 0 failed"


def _report(tmp_path: Path, name: str, cases: str) -> Path:
    p = tmp_path / name
    p.write_text(f"<testsuites><testsuite>{cases}</testsuite></testsuites>")
    return p


def test_junit_main_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unit = _report(tmp_path, "u.xml", '<testcase name="a"/><testcase name="b"/>')
    kern = _report(
        tmp_path, "k.xml", '<testcase name="c"/><testcase name="d"><skipped/></testcase>'
    )
    empty = _report(tmp_path, "e.xml", "")

    assert junit.main([f"unit={unit}", f"kernel!={kern}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["unit: 2 passed, 0 failed", "kernel: 1 passed, 0 failed, 1 skipped",
                   "all: 3 passed, 0 failed, 1 skipped"]

    assert junit.main(["--strict-skips", f"unit={unit}", f"kernel!={kern}"]) == 1
    captured = capsys.readouterr()
    assert "kernel: 1 skipped" in captured.err
    assert captured.out.splitlines()[-1] == "all: 3 passed, 0 failed, 1 skipped"

    assert junit.main(["--require-tests", f"kernel!={empty}"]) == 1
    assert "kernel: no test ran" in capsys.readouterr().err
    # the option only applies to LABEL!= reports
    assert junit.main(["--require-tests", f"unit={empty}"]) == 0
    capsys.readouterr()

    assert junit.main([f"kernel!={tmp_path / 'missing.xml'}"]) == 1
    captured = capsys.readouterr()
    assert "no readable report" in captured.err
    assert captured.out.splitlines()[-1] == "all: 0 passed, 0 failed"


# --------------------------------------------------------------------------- conftest rules


def _run_pytest(
    tmp_path: Path, env: dict[str, str], *, systemd: bool = False
) -> subprocess.CompletedProcess[str]:
    """A child pytest on a copy of tests/conftest.py and a file of kernel tests (with
    ``systemd``: a file of systemd tests, one also marked kernel, instead)."""
    (tmp_path / "conftest.py").write_text((TESTS / "conftest.py").read_text())
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\naddopts = --strict-markers\nmarkers =\n    kernel: real kernel\n"
        "    systemd: systemd as PID 1\n"
    )
    if systemd:
        (tmp_path / "test_sd.py").write_text(
            "import pytest\n"
            "@pytest.mark.systemd\n"
            "def test_needs_systemd():\n"
            "    pass\n"
            "@pytest.mark.systemd\n"
            "@pytest.mark.kernel\n"
            "def test_needs_both(cgroup2_mount):\n"
            "    pass\n"
            "def test_plain():\n"
            "    pass\n"
        )
        return _child_pytest(tmp_path, env)
    (tmp_path / "test_k.py").write_text(
        "import pytest\n"
        "@pytest.mark.kernel\n"
        "def test_needs_kernel(cgroup2_mount):\n"
        "    assert cgroup2_mount.name == 'cgroup'\n"
        "def test_plain():\n"
        "    pass\n"
    )
    return _child_pytest(tmp_path, env)


def _child_pytest(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("CI", "GOVERNOR_SANDBOX", "GOVERNOR_STRICT_KERNEL")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", str(tmp_path)],
        cwd=tmp_path, env={**base, **env}, capture_output=True, text=True, check=False,
    )


@pytest.mark.skipif(is_cgroup2_mount("/sys/fs/cgroup") and os.environ.get("GOVERNOR_SANDBOX")
                    == "1", reason="checks the behaviour outside the sandbox")
def test_kernel_tests_are_skipped_outside_the_sandbox_with_the_reason(tmp_path: Path) -> None:
    r = _run_pytest(tmp_path, {"CI": "true"})
    assert r.returncode == 0, r.stdout
    assert "1 passed, 1 skipped" in r.stdout
    assert "run inside `governor sandbox exec`" in r.stdout


@pytest.mark.skipif(is_cgroup2_mount("/sys/fs/cgroup"),
                    reason="needs a host whose /sys/fs/cgroup is not cgroup2")
def test_a_skipped_kernel_test_fails_in_the_sandbox_under_ci(tmp_path: Path) -> None:
    # GOVERNOR_SANDBOX=1 without a cgroup2 mount: the kernel test is skipped, and strict
    # mode (CI=true or GOVERNOR_STRICT_KERNEL=1) turns that skip into a failure
    for strict in ({"CI": "true"}, {"GOVERNOR_STRICT_KERNEL": "1"}):
        r = _run_pytest(tmp_path, {"GOVERNOR_SANDBOX": "1", **strict})
        assert r.returncode == 1, r.stdout
        # the skip came from the setup phase, so pytest calls the failure an error
        assert "1 passed, 1 error" in r.stdout
        assert "a skip here is a failure" in r.stdout
    r = _run_pytest(tmp_path, {"GOVERNOR_SANDBOX": "1"})
    assert r.returncode == 0, r.stdout
    assert "1 passed, 1 skipped" in r.stdout


def _systemd_pid1() -> bool:
    from tests.conftest import systemd_is_pid1

    return systemd_is_pid1()


@pytest.mark.skipif(_systemd_pid1(), reason="checks the behaviour without systemd as PID 1")
@pytest.mark.parametrize(
    ("env", "rc", "summary"),
    [
        # on the host: skipped with the reason, strict or not
        ({"CI": "true"}, 0, "1 passed, 2 skipped"),
        ({}, 0, "1 passed, 2 skipped"),
        # in a sandbox without systemd as PID 1 (a bare boot, faked here by the marker):
        # skipped, and a failure in strict mode
        ({"GOVERNOR_SANDBOX": "1"}, 0, "1 passed, 2 skipped"),
        ({"GOVERNOR_SANDBOX": "1", "CI": "true"}, 1, "1 passed, 2 errors"),
        ({"GOVERNOR_SANDBOX": "1", "GOVERNOR_STRICT_KERNEL": "1"}, 1, "1 passed, 2 errors"),
    ],
)
def test_systemd_tests_need_systemd_as_pid1(
    tmp_path: Path, env: dict[str, str], rc: int, summary: str
) -> None:
    r = _run_pytest(tmp_path, env, systemd=True)
    assert r.returncode == rc, r.stdout
    assert summary in r.stdout
    if rc:
        assert "systemd test skipped inside the sandbox" in r.stdout
        assert "a skip here is a failure" in r.stdout
    # a test with both markers gets the systemd reason: the bare boot cannot run it either
    assert r.stdout.count("needs systemd as PID 1: runs inside `governor sandbox exec "
                          "--systemd`") == 2


# --------------------------------------------------------------------------- a real boot


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(
    not Cache(default_cache_dir()).ready() or shutil.which("qemu-system-x86_64") is None,
    reason="the sandbox is not set up here: run `governor sandbox setup`",
)
@pytest.mark.skipif(os.environ.get("GOVERNOR_SANDBOX") == "1", reason="no VM inside the VM")
def test_exec_boots_relays_output_and_returns_the_exit_code(tmp_path: Path) -> None:
    """One real boot (about 5 s): exit code, both streams, env, cwd, rw share, port."""
    import io
    import threading
    import urllib.request

    shared = tmp_path / "shared dir"
    shared.mkdir()
    port = _free_port()
    guest_py = (
        "import http.server, os, socketserver, sys\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(b'guest-ok')\n"
        "    def log_message(self, *a): pass\n"
        "srv = socketserver.TCPServer(('0.0.0.0', 9100), H)\n"
        "open(os.path.join(sys.argv[1], 'listening'), 'w').close()\n"
        "srv.timeout = 60; srv.handle_request()\n"
    )
    script = (
        'echo "out:$GOVERNOR_SANDBOX:$FOO:$PWD"; echo "err:$(hostname)" >&2; '
        'echo written > "$1/from-guest"; "$3" -c "$2" "$1"; exit 42'
    )
    out, err = io.BytesIO(), io.BytesIO()
    fetched: list[bytes] = []

    def fetch() -> None:
        for _ in range(600):
            if (shared / "listening").exists():
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
                    fetched.append(r.read())
                return
            threading.Event().wait(0.1)

    client = threading.Thread(target=fetch, daemon=True)
    client.start()
    rc = exec_(
        # sys.executable is an absolute argument: kept visible even when the venv is in /tmp
        ["bash", "-c", script, "sh", str(shared), guest_py, sys.executable],
        rwdirs=[shared],
        env={"FOO": "b a r"},
        cwd=tmp_path,
        mem_mb=512,
        disk_mb=0,
        timeout=300,
        port_forwards=[(port, 9100)],
        stdout=out,
        stderr=err,
    )
    client.join(timeout=30)
    assert rc == 42, err.getvalue().decode()
    assert out.getvalue().decode() == f"out:1:b a r:{tmp_path}\n"
    assert err.getvalue().decode() == "err:governor-sandbox\n"
    assert (shared / "from-guest").read_text() == "written\n"
    assert fetched == [b"guest-ok"]


@pytest.mark.skipif(
    not Cache(default_cache_dir()).ready() or shutil.which("qemu-system-x86_64") is None,
    reason="the sandbox is not set up here: run `governor sandbox setup`",
)
@pytest.mark.skipif(os.environ.get("GOVERNOR_SANDBOX") == "1", reason="no VM inside the VM")
@pytest.mark.skipif(not os.access("/lib/systemd/systemd", os.X_OK), reason="no systemd here")
def test_exec_systemd_boots_relays_output_and_returns_the_exit_code(tmp_path: Path) -> None:
    """One real boot with systemd as PID 1 (about 15 s): the bare mode's conventions."""
    import io

    shared = tmp_path / "shared dir"
    shared.mkdir()
    script = (
        'echo "out:$GOVERNOR_SANDBOX:$FOO:$PWD:$(cat /proc/1/comm):$(id -u)"; '
        'echo "err:$(hostname):$(cut -d: -f3 /proc/self/cgroup)" >&2; '
        'touch /etc/systemd/system/probe.service && echo written > "$1/from-guest"; exit 42'
    )
    out, err = io.BytesIO(), io.BytesIO()
    rc = exec_(
        ["bash", "-c", script, "sh", str(shared)],
        rwdirs=[shared],
        env={"FOO": "b a r"},
        cwd=tmp_path,
        mem_mb=768,
        disk_mb=0,
        timeout=300,
        stdout=out,
        stderr=err,
        systemd=True,
    )
    assert rc == 42, err.getvalue().decode()
    assert out.getvalue().decode() == f"out:1:b a r:{tmp_path}:systemd:0\n"
    assert err.getvalue().decode() == (
        f"err:governor-sandbox:/system.slice/{SYSTEMD_SERVICE}\n"
    )
    assert (shared / "from-guest").read_text() == "written\n"


def test_port_forward_option_parsing() -> None:
    import click

    from governor.sandbox.cli import _port_forward

    assert _port_forward("18000:9100") == (18000, 9100)
    assert _port_forward("9100") == (9100, 9100)
    with pytest.raises(click.BadParameter):
        _port_forward("a:b")
