"""The QEMU command line of a sandbox boot: :class:`BootSpec` (pure data) -> argv."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from governor.sandbox.systemd_mode import SYSTEMD_CMDLINE

__all__ = ["GUEST_ADDR", "KERNEL_CMDLINE", "BootSpec", "check_host_forward", "qemu_argv"]

GUEST_ADDR = "10.0.2.15"
#: QEMU user networking's own addresses (gateway, DNS, and the guest's)
_SLIRP_RESERVED = ("10.0.2.0", "10.0.2.2", "10.0.2.3", GUEST_ADDR, "10.0.2.255")


def check_host_forward(addr: str, guest_port: int, host_port: int) -> None:
    """A guest-to-host forward is an unused address of the guest's 10.0.2.0/24 network and
    two ports; anything else is a :class:`SandboxError` that says what would be right."""
    import ipaddress

    from governor.sandbox.errors import SandboxError

    try:
        ip = ipaddress.IPv4Address(addr)
    except ValueError:
        raise SandboxError(f"bad guest-to-host forward address {addr!r}: an IPv4 address "
                           "in 10.0.2.0/24, e.g. 10.0.2.100") from None
    if ip not in ipaddress.IPv4Network("10.0.2.0/24") or addr in _SLIRP_RESERVED:
        raise SandboxError(f"bad guest-to-host forward address {addr}: use an address of "
                           "10.0.2.0/24 other than .0, .2 (gateway), .3 (DNS), .15 (the "
                           "guest) and .255, e.g. 10.0.2.100")
    if not (0 < guest_port < 65536 and 0 < host_port < 65536):
        raise SandboxError(f"bad guest-to-host forward {addr}:{guest_port} -> host port "
                           f"{host_port}: ports are 1..65535")


@dataclass(frozen=True)
class BootSpec:
    """Everything that decides the QEMU command line (pure data, see :func:`qemu_argv`)."""

    qemu: str
    vmlinux: Path
    initramfs: Path
    workdir: Path
    mem_mb: int = 1024
    cpus: int = 2
    disk: Path | None = None
    rwdirs: tuple[Path, ...] = ()
    port_forwards: tuple[tuple[int, int], ...] = ()
    #: (guest address, guest port, host port): the guest's connections to the address
    #: reach 127.0.0.1:host port on the host (:mod:`governor.sandbox.relay`)
    host_forwards: tuple[tuple[str, int, int], ...] = ()
    #: the Python that runs the relay on the host
    python: str = ""
    verbose: bool = False
    systemd: bool = False
    append: str = ""
    extra: tuple[str, ...] = field(default=())


#: ``hugepages=64``: 64 huge pages of the default size (2 MB on x86_64: 128 MiB of the VM's
#: memory) reserved at boot, for the hugetlb controller's kernel tests
#: (tests/kernel/test_hugetlb_kernel.py; Documentation/admin-guide/mm/hugetlbpage.rst)
KERNEL_CMDLINE = (
    "console=ttyS0 panic=-1 oops=panic mitigations=off tsc=reliable no_timer_check "
    "i8042.noaux i8042.nokbd i8042.nopnp cryptomgr.notests hugepages=64 rdinit=/init"
)


def qemu_argv(spec: BootSpec) -> list[str]:
    """The QEMU command line for ``spec`` (TCG only: KVM is never tried)."""
    append = KERNEL_CMDLINE + ("" if spec.verbose else " quiet loglevel=3")
    if spec.systemd:
        # `quiet` keeps systemd's status lines off the console too; --verbose shows them
        append += " " + SYSTEMD_CMDLINE + (" systemd.show_status=1" if spec.verbose else "")
    if spec.append:
        append += " " + spec.append
    w = spec.workdir
    argv = [
        spec.qemu,
        "-machine", "pc", "-accel", "tcg,thread=multi", "-cpu", "max",
        "-m", str(spec.mem_mb), "-smp", str(spec.cpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(spec.vmlinux), "-initrd", str(spec.initramfs),
        "-append", append,
        "-serial", f"file:{w / 'console.log'}",
        "-fsdev", "local,id=fsroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=fsroot,mount_tag=hostroot",
        "-fsdev", f"local,id=fsrun,path={_qemu_opt(w)},security_model=none,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=fsrun,mount_tag=vmrun",
        "-device", "virtio-serial-pci",
        "-chardev", f"file,id=gout,path={_qemu_opt(w / 'out')},append=on",
        "-device", "virtserialport,chardev=gout,name=vm.out",
        "-chardev", f"file,id=gerr,path={_qemu_opt(w / 'err')},append=on",
        "-device", "virtserialport,chardev=gerr,name=vm.err",
    ]
    for i, d in enumerate(spec.rwdirs):
        argv += [
            "-fsdev", f"local,id=fsrw{i},path={_qemu_opt(d)},security_model=none,multidevs=remap",
            "-device", f"virtio-9p-pci,fsdev=fsrw{i},mount_tag=rw{i}",
        ]
    if spec.disk is not None:
        argv += [
            "-drive", f"if=none,id=d0,file={_qemu_opt(spec.disk)},format=raw,cache=unsafe",
            "-device", "virtio-blk-pci,drive=d0",
        ]
    if spec.port_forwards or spec.host_forwards:
        fwd = "".join(
            f",hostfwd=tcp:127.0.0.1:{h}-{GUEST_ADDR}:{g}" for h, g in spec.port_forwards
        )
        relay = Path(__file__).with_name("relay.py")
        fwd += "".join(
            f",guestfwd=tcp:{a}:{g}-cmd:{_qemu_opt(Path(spec.python))} "
            f"{_qemu_opt(relay)} 127.0.0.1 {h}" for a, g, h in spec.host_forwards
        )
        argv += [
            "-netdev", f"user,id=n0,restrict=on{fwd}",
            "-device", "virtio-net-pci,netdev=n0",
        ]
    return argv + list(spec.extra)


def _qemu_opt(p: Path) -> str:
    """A path inside a QEMU -opt=value list: commas are escaped by doubling."""
    return str(p).replace(",", ",,")
