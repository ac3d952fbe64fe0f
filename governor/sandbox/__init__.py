"""The sandbox: a throw-away QEMU guest with a real, pure cgroup v2 hierarchy.

Tests that need a real cgroup v2 kernel never touch the host's ``/sys/fs/cgroup``: they run
inside a Linux guest booted by :func:`exec_` (:mod:`~governor.sandbox.run`), which sees the
host's root filesystem read-only (so the host's Python, the project's venv and installed
packages all work) under a RAM overlay, and mounts its own cgroup2 hierarchy at
``/sys/fs/cgroup``.

:func:`setup` (:mod:`~governor.sandbox.build`) prepares the cache once (idempotent, a quick
no-op afterwards): Debian's ``linux-image-amd64`` kernel package, downloaded with
``apt-get download`` and unpacked with ``dpkg -x`` (never installed), its uncompressed
``vmlinux``, a pruned and depmod-indexed module tree, and a busybox initramfs with
``guest-init.sh`` as ``/init``.

The guest (see guest-init.sh):

* ``/`` is the host's ``/`` over 9p, read-only, under a tmpfs overlay: guest writes land in
  RAM and vanish at power-off; ``rwdirs`` are shared read-write at the same path;
* ``/sys/fs/cgroup`` is cgroup2 mounted ``nsdelegate,memory_recursiveprot`` with cpu, io,
  memory, pids (and cpuset, hugetlb, rdma, misc) available;
* ``/dev`` is devtmpfs (``/dev/kmsg``, ``/dev/vda``: a blank sparse scratch disk of
  ``disk_mb`` MiB, none when 0), ``/tmp``, ``/run`` and ``/dev/shm`` are tmpfs;
* the host paths under ``/tmp`` that the run names stay visible over the fresh ``/tmp``:
  the top directory below /tmp of the working directory, of each absolute argument and of
  each ``PATH`` entry (a project cloned to /tmp/x keeps /tmp/x); the rest of the host's
  /tmp is hidden (``rwdirs`` are mounted at their paths in any case);
* ``busybox modprobe NAME`` loads modules of the pruned tree (zram, loop, veth, bfq, ...);
* the command runs as root in the caller's working directory with ``GOVERNOR_SANDBOX=1``,
  ``PATH``, ``HOME``, ``LANG=C.UTF-8``, ``TERM=dumb`` and the ``env`` given, stdin
  ``/dev/null``; its stdout/stderr are relayed to ours as they come.

With ``systemd=True`` (``governor sandbox exec --systemd``) the guest boots the host's own
systemd (``/lib/systemd/systemd``, seen through the shared root) as PID 1 instead: the guest
init builds the same root, then does ``switch_root`` into it, with a pure cgroup v2 hierarchy
(``systemd.unified_cgroup_hierarchy=1``) and the boot target ``governor-sandbox.target``,
which pulls only sysinit, the journald and D-Bus sockets, ``dbus.service`` and
``governor-sandbox.service``: the command, run by a wrapper once the boot has finished
(``systemctl is-system-running --wait``), with the same environment, working directory,
streams and exit codes as above.  The unit has ``Delegate=yes`` (a test may manage its
own cgroup subtree), ``OOMPolicy=continue``, ``TasksMax=infinity``, ``IgnoreSIGPIPE=no``;
the guest powers off when it ends.  The guest's ``/etc`` (so ``/etc/systemd/system``) is
writable (in RAM).  Units that make no sense in a throw-away guest without udev, ttys or
network are masked (:data:`SYSTEMD_MASKED`), so are the host's generators but the debug
one (:data:`SYSTEMD_KEPT_GENERATORS`) and Debian's ``tmp.conf`` tmpfiles rule
(its ``D /tmp`` would empty the kept host paths under /tmp); ``/.dockerenv`` is removed
from the overlay, or systemd would believe it runs in a container and ignore the kernel
command line.  It takes about twice the bare boot (see docs/operations.md).

Exit codes of :func:`exec_`: the command's own; 124 when it timed out; 125 when the guest
never reported one (boot failure, kernel panic): the console tail is printed on stderr.

Knobs (environment variables):

``GOVERNOR_SANDBOX_DIR``
    the cache directory (default ``~/.cache/governor/sandbox``), about 150 MiB.
``GOVERNOR_SANDBOX_KERNEL_DEB``
    a ``linux-image-*.deb`` to use instead of downloading Debian's current one.
``GOVERNOR_SANDBOX_QEMU``
    the QEMU binary (default ``qemu-system-x86_64`` on ``PATH``).
``GOVERNOR_SANDBOX_APPEND``
    extra kernel command line for the guest.

Facts behind the choices: KVM is never used (on nested "kvm-pvm" hosts a stock kernel hangs
under KVM, and falling back by itself would hide that), so QEMU runs TCG, where Python is
about 14x slower than on the host: boot once per test suite, not once per test.  Booting
the uncompressed vmlinux (PVH) is about twice as fast as the bzImage.  ``io.weight`` only
acts once iocost is enabled on the device (``echo "254:0 enable=1" >
/sys/fs/cgroup/io.cost.qos``) or with BFQ (``busybox modprobe bfq``).

The host root is mounted with 9p ``cache=loose`` (Python imports many files: much faster),
so the guest assumes host files do not change during a run; a file being rewritten on the
host while the guest reads it can be seen torn.  ``rwdirs`` are not cached.

Port forwards (``port_forwards=[(host, guest)]``) bind ``127.0.0.1:host`` on the host only
and reach ``10.0.2.15:guest`` in the guest (QEMU user networking with ``restrict=on``: the
guest reaches nothing outside); a guest server must listen on ``0.0.0.0`` or ``10.0.2.15``.

The modules, by job: :mod:`~governor.sandbox.cache` (the cache directory and its stamp),
:mod:`~governor.sandbox.host` (the host's packages, QEMU, systemd),
:mod:`~governor.sandbox.build` (kernel and initramfs: ``setup``), :mod:`~governor.sandbox.qemu`
(the QEMU command line), :mod:`~governor.sandbox.guest` and
:mod:`~governor.sandbox.systemd_mode` (the files a run hands the guest),
:mod:`~governor.sandbox.run` (``exec_``: boot, relay, exit code), with
:mod:`~governor.sandbox.initramfs` (cpio, ELF and module-index pieces),
:mod:`~governor.sandbox.detect` (am I in the guest) and :mod:`~governor.sandbox.junit`.
"""

from governor.sandbox.build import setup
from governor.sandbox.cache import default_cache_dir
from governor.sandbox.detect import in_sandbox, is_cgroup2_mount
from governor.sandbox.errors import SandboxError, SandboxNotReady
from governor.sandbox.run import exec_

__all__ = [
    "SandboxError",
    "SandboxNotReady",
    "default_cache_dir",
    "exec_",
    "in_sandbox",
    "is_cgroup2_mount",
    "setup",
]
