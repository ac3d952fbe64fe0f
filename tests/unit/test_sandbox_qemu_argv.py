"""The QEMU command line, pinned: the argv ``qemu_argv`` built for these specs before
governor/sandbox/vm.py was split by job (#17; captured from the code at h4).  A change to
the command line shows up here: update the expected argv only on purpose."""

from __future__ import annotations

from pathlib import Path

import pytest

from governor.sandbox.qemu import BootSpec, qemu_argv

BASE: dict[str, object] = {
    "qemu": "/usr/bin/qemu-system-x86_64",
    "vmlinux": Path("/cache/vmlinux"),
    "initramfs": Path("/cache/initramfs.img"),
    "workdir": Path("/tmp/governor-sandbox-x"),
}

SPECS: dict[str, dict[str, object]] = {
    "defaults": {},
    "bare_full": {
        "mem_mb": 2048,
        "cpus": 3,
        "disk": Path("/tmp/governor-sandbox-x/disk.img"),
        "rwdirs": (Path("/work/a"), Path("/work/b,c")),
        "port_forwards": ((8080, 80), (2222, 22)),
        "append": "foo=1 bar",
    },
    "bare_verbose_comma_workdir": {
        "verbose": True,
        "workdir": Path("/tmp/w,x"),
        "disk": Path("/tmp/w,x/disk.img"),
    },
    "systemd": {"systemd": True, "append": "systemd.mask=dbus.service", "extra": ("-S",)},
    "systemd_verbose": {
        "systemd": True,
        "verbose": True,
        "cpus": 1,
        "mem_mb": 512,
        "port_forwards": ((9000, 9000),),
    },
}

EXPECTED: dict[str, list[str]] = {
    "defaults": [
        "/usr/bin/qemu-system-x86_64",
        "-machine",
        "pc",
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-m",
        "1024",
        "-smp",
        "2",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        "/cache/vmlinux",
        "-initrd",
        "/cache/initramfs.img",
        "-append",
        (
            "console=ttyS0 panic=-1 oops=panic mitigations=off tsc=reliable "
            "no_timer_check i8042.noaux i8042.nokbd i8042.nopnp cryptomgr.notests "
            "hugepages=64 rdinit=/init quiet loglevel=3"
        ),
        "-serial",
        "file:/tmp/governor-sandbox-x/console.log",
        "-fsdev",
        "local,id=fsroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device",
        "virtio-9p-pci,fsdev=fsroot,mount_tag=hostroot",
        "-fsdev",
        "local,id=fsrun,path=/tmp/governor-sandbox-x,security_model=none,multidevs=remap",
        "-device",
        "virtio-9p-pci,fsdev=fsrun,mount_tag=vmrun",
        "-device",
        "virtio-serial-pci",
        "-chardev",
        "file,id=gout,path=/tmp/governor-sandbox-x/out,append=on",
        "-device",
        "virtserialport,chardev=gout,name=vm.out",
        "-chardev",
        "file,id=gerr,path=/tmp/governor-sandbox-x/err,append=on",
        "-device",
        "virtserialport,chardev=gerr,name=vm.err",
    ],
    "bare_full": [
        "/usr/bin/qemu-system-x86_64",
        "-machine",
        "pc",
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-m",
        "2048",
        "-smp",
        "3",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        "/cache/vmlinux",
        "-initrd",
        "/cache/initramfs.img",
        "-append",
        (
            "console=ttyS0 panic=-1 oops=panic mitigations=off tsc=reliable "
            "no_timer_check i8042.noaux i8042.nokbd i8042.nopnp cryptomgr.notests "
            "hugepages=64 rdinit=/init quiet loglevel=3 foo=1 bar"
        ),
        "-serial",
        "file:/tmp/governor-sandbox-x/console.log",
        "-fsdev",
        "local,id=fsroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device",
        "virtio-9p-pci,fsdev=fsroot,mount_tag=hostroot",
        "-fsdev",
        "local,id=fsrun,path=/tmp/governor-sandbox-x,security_model=none,multidevs=remap",
        "-device",
        "virtio-9p-pci,fsdev=fsrun,mount_tag=vmrun",
        "-device",
        "virtio-serial-pci",
        "-chardev",
        "file,id=gout,path=/tmp/governor-sandbox-x/out,append=on",
        "-device",
        "virtserialport,chardev=gout,name=vm.out",
        "-chardev",
        "file,id=gerr,path=/tmp/governor-sandbox-x/err,append=on",
        "-device",
        "virtserialport,chardev=gerr,name=vm.err",
        "-fsdev",
        "local,id=fsrw0,path=/work/a,security_model=none,multidevs=remap",
        "-device",
        "virtio-9p-pci,fsdev=fsrw0,mount_tag=rw0",
        "-fsdev",
        "local,id=fsrw1,path=/work/b,,c,security_model=none,multidevs=remap",
        "-device",
        "virtio-9p-pci,fsdev=fsrw1,mount_tag=rw1",
        "-drive",
        "if=none,id=d0,file=/tmp/governor-sandbox-x/disk.img,format=raw,cache=unsafe",
        "-device",
        "virtio-blk-pci,drive=d0",
        "-netdev",
        (
            "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:8080-10.0.2.15:80,"
            "hostfwd=tcp:127.0.0.1:2222-10.0.2.15:22"
        ),
        "-device",
        "virtio-net-pci,netdev=n0",
    ],
    "bare_verbose_comma_workdir": [
        "/usr/bin/qemu-system-x86_64",
        "-machine",
        "pc",
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-m",
        "1024",
        "-smp",
        "2",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        "/cache/vmlinux",
        "-initrd",
        "/cache/initramfs.img",
        "-append",
        (
            "console=ttyS0 panic=-1 oops=panic mitigations=off tsc=reliable "
            "no_timer_check i8042.noaux i8042.nokbd i8042.nopnp cryptomgr.notests "
            "hugepages=64 rdinit=/init"
        ),
        "-serial",
        "file:/tmp/w,x/console.log",
        "-fsdev",
        "local,id=fsroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device",
        "virtio-9p-pci,fsdev=fsroot,mount_tag=hostroot",
        "-fsdev",
        "local,id=fsrun,path=/tmp/w,,x,security_model=none,multidevs=remap",
        "-device",
        "virtio-9p-pci,fsdev=fsrun,mount_tag=vmrun",
        "-device",
        "virtio-serial-pci",
        "-chardev",
        "file,id=gout,path=/tmp/w,,x/out,append=on",
        "-device",
        "virtserialport,chardev=gout,name=vm.out",
        "-chardev",
        "file,id=gerr,path=/tmp/w,,x/err,append=on",
        "-device",
        "virtserialport,chardev=gerr,name=vm.err",
        "-drive",
        "if=none,id=d0,file=/tmp/w,,x/disk.img,format=raw,cache=unsafe",
        "-device",
        "virtio-blk-pci,drive=d0",
    ],
    "systemd": [
        "/usr/bin/qemu-system-x86_64",
        "-machine",
        "pc",
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-m",
        "1024",
        "-smp",
        "2",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        "/cache/vmlinux",
        "-initrd",
        "/cache/initramfs.img",
        "-append",
        (
            "console=ttyS0 panic=-1 oops=panic mitigations=off tsc=reliable "
            "no_timer_check i8042.noaux i8042.nokbd i8042.nopnp cryptomgr.notests "
            "hugepages=64 rdinit=/init quiet loglevel=3 "
            "systemd.unified_cgroup_hierarchy=1 "
            "systemd.unit=governor-sandbox.target systemd.firstboot=off "
            "systemd.mask=dbus.service"
        ),
        "-serial",
        "file:/tmp/governor-sandbox-x/console.log",
        "-fsdev",
        "local,id=fsroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device",
        "virtio-9p-pci,fsdev=fsroot,mount_tag=hostroot",
        "-fsdev",
        "local,id=fsrun,path=/tmp/governor-sandbox-x,security_model=none,multidevs=remap",
        "-device",
        "virtio-9p-pci,fsdev=fsrun,mount_tag=vmrun",
        "-device",
        "virtio-serial-pci",
        "-chardev",
        "file,id=gout,path=/tmp/governor-sandbox-x/out,append=on",
        "-device",
        "virtserialport,chardev=gout,name=vm.out",
        "-chardev",
        "file,id=gerr,path=/tmp/governor-sandbox-x/err,append=on",
        "-device",
        "virtserialport,chardev=gerr,name=vm.err",
        "-S",
    ],
    "systemd_verbose": [
        "/usr/bin/qemu-system-x86_64",
        "-machine",
        "pc",
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-m",
        "512",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-kernel",
        "/cache/vmlinux",
        "-initrd",
        "/cache/initramfs.img",
        "-append",
        (
            "console=ttyS0 panic=-1 oops=panic mitigations=off tsc=reliable "
            "no_timer_check i8042.noaux i8042.nokbd i8042.nopnp cryptomgr.notests "
            "hugepages=64 rdinit=/init systemd.unified_cgroup_hierarchy=1 "
            "systemd.unit=governor-sandbox.target systemd.firstboot=off systemd.show_status=1"
        ),
        "-serial",
        "file:/tmp/governor-sandbox-x/console.log",
        "-fsdev",
        "local,id=fsroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device",
        "virtio-9p-pci,fsdev=fsroot,mount_tag=hostroot",
        "-fsdev",
        "local,id=fsrun,path=/tmp/governor-sandbox-x,security_model=none,multidevs=remap",
        "-device",
        "virtio-9p-pci,fsdev=fsrun,mount_tag=vmrun",
        "-device",
        "virtio-serial-pci",
        "-chardev",
        "file,id=gout,path=/tmp/governor-sandbox-x/out,append=on",
        "-device",
        "virtserialport,chardev=gout,name=vm.out",
        "-chardev",
        "file,id=gerr,path=/tmp/governor-sandbox-x/err,append=on",
        "-device",
        "virtserialport,chardev=gerr,name=vm.err",
        "-netdev",
        "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:9000-10.0.2.15:9000",
        "-device",
        "virtio-net-pci,netdev=n0",
    ],
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_qemu_argv_is_unchanged(name: str) -> None:
    spec = BootSpec(**{**BASE, **SPECS[name]})  # type: ignore[arg-type]
    assert qemu_argv(spec) == EXPECTED[name]


def test_every_spec_has_its_expected_argv() -> None:
    assert sorted(SPECS) == sorted(EXPECTED)
