#!/bin/sh
# governor sandbox: PID 1 of the throw-away guest (busybox sh, inside the initramfs that
# `governor sandbox setup` builds).  It
#   1. loads the virtio / 9p / overlay modules listed in /mods/base.list (in dependency order),
#   2. mounts the run directory that the host shares as 9p tag "vmrun" and reads its
#      `config` (shell variables written by governor.sandbox.vm) and `rwdirs`,
#   3. builds the guest root: the host's / over 9p, read-only, under a tmpfs overlay,
#      with proc, sys, a PURE cgroup2 /sys/fs/cgroup (nsdelegate,memory_recursiveprot),
#      devtmpfs (/dev/kmsg, /dev/vda), devpts, /dev/shm, /run and /tmp as tmpfs (keeping
#      the host paths under /tmp listed in vmrun/keep visible),
#   4. mounts the read-write shares (tags rw0, rw1, ...) at their host paths,
#   5. brings up lo (and eth0 with the static user-net address when ports are forwarded),
#   6. runs /run/governor-sandbox/cmd.sh chrooted there with stdout/stderr on the
#      virtio-serial ports vm.out / vm.err, writes its exit code to vmrun/rc, powers off.
# With VM_SYSTEMD=1 in the config (`governor sandbox exec --systemd`), step 3 leaves proc,
# sys, cgroup2, devpts and /dev/shm to systemd, and step 6 is instead: copy vmrun/systemd/
# (units, masks, tmpfiles.d masks) into the overlay's /etc, remove /.dockerenv (else
# systemd thinks it runs in a container and ignores the kernel command line), link
# /dev/virtio-ports/vm.{out,err}, move /dev, /sys and /proc into the new root and
# `exec switch_root` to the host's systemd as PID 1; its governor-sandbox.service runs
# cmd.sh, writes rc and powers off (see governor.sandbox.vm.systemd_units).
# Lines starting "sandbox-init:" go to the serial console (the host keeps it in
# console.log and shows its tail when the guest never reports an exit code).
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev

log() { echo "sandbox-init: $(cut -d' ' -f1 /proc/uptime)s $*" > /dev/console; }
die() { echo "sandbox-init: FATAL: $*" > /dev/console; sync; poweroff -f; sleep 60; }
load_modules() {
  while read -r m; do
    [ -n "$m" ] || continue
    insmod "/mods/$m" || die "insmod $m failed"
  done < "$1"
}

log start
load_modules /mods/base.list
log modules-loaded

P9=trans=virtio,version=9p2000.L,msize=512000
mkdir -p /vmrun /lower /upper /newroot
mount -t 9p -o "$P9" vmrun /vmrun || die "9p mount of the run directory failed"
[ -r /vmrun/config ] || die "no /vmrun/config"
# VM_CWD, VM_MODULES_DIR, VM_NET, VM_HOSTNAME, VM_TMPFS, VM_SYSTEMD, VM_SYSTEMD_BIN
. /vmrun/config

mount -t 9p -o "ro,$P9,cache=loose" hostroot /lower || die "9p mount of the host root failed"
mount -t tmpfs -o mode=0755 upper /upper
mkdir -p /upper/u /upper/w
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w,xino=off root /newroot \
  || die "overlay mount failed"
R=/newroot
if [ "$VM_SYSTEMD" = 1 ]; then
  # systemd mounts the rest itself; a /run already mounted it leaves alone (the run
  # directory is bound below it)
  mount -t tmpfs -o mode=0755,nosuid,nodev run $R/run
else
  mount -t proc proc $R/proc
  mount -t sysfs sys $R/sys
  mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 $R/sys/fs/cgroup \
    || die "cgroup2 mount failed"
  mount -t devtmpfs dev $R/dev
  mkdir -p $R/dev/pts $R/dev/shm
  mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts
  mount -t tmpfs -o mode=1777 shm $R/dev/shm
  mount -t tmpfs -o mode=0755 run $R/run
fi

# the kernel's own modules (pruned set, indexed by depmod) for `busybox modprobe NAME`;
# bound before /tmp becomes a tmpfs, in case the cache directory lives under /tmp
if [ -n "$VM_MODULES_DIR" ]; then
  mkdir -p $R/lib/modules
  mount -o bind "$R$VM_MODULES_DIR" $R/lib/modules || die "bind of $VM_MODULES_DIR failed"
fi

# /tmp: a fresh tmpfs, unless VM_TMPFS=0.  The host paths under /tmp that the run depends
# on (listed in vmrun/keep: the working directory's and the command's, see vm.py) stay
# visible: a bind of each (host content read-only underneath, guest writes in RAM) is
# moved on top of the tmpfs.
if [ "$VM_TMPFS" != 0 ]; then
  n=0
  if [ -r /vmrun/keep ]; then
    while read -r path; do
      [ -n "$path" ] && [ -e "$R$path" ] || continue
      mkdir -p /keep
      if [ -d "$R$path" ]; then mkdir -p /keep/$n; else : > /keep/$n; fi
      mount -o bind "$R$path" /keep/$n || die "bind of $path failed"
      echo "$path" > /keep/$n.path
      n=$((n+1))
    done < /vmrun/keep
  fi
  mount -t tmpfs -o mode=1777 tmp $R/tmp
  i=0
  while [ $i -lt $n ]; do
    path=$(cat /keep/$i.path)
    if [ -d /keep/$i ]; then mkdir -p "$R$path"; else : > "$R$path"; fi
    mount -o move /keep/$i "$R$path" || die "could not keep $path visible under /tmp"
    i=$((i+1))
  done
fi

mkdir -p $R/run/governor-sandbox
mount -o bind /vmrun $R/run/governor-sandbox

if [ -r /vmrun/rwdirs ]; then
  while read -r tag dir; do
    [ -n "$tag" ] || continue
    mkdir -p "$R$dir" && mount -t 9p -o "$P9" "$tag" "$R$dir" || die "9p mount of $dir failed"
  done < /vmrun/rwdirs
fi
log mounts-done

hostname "${VM_HOSTNAME:-governor-sandbox}"
ip link set lo up
if [ "$VM_NET" = 1 ]; then
  load_modules /mods/net.list
  # QEMU user networking, no DHCP: the address slirp expects; hostfwd targets it
  ip addr add 10.0.2.15/24 dev eth0 || die "eth0 address failed"
  ip link set eth0 up
  ip route add default via 10.0.2.2
  log net-up
fi

out=; err=
for p in /sys/class/virtio-ports/*; do
  case "$(cat "$p/name")" in
    vm.out) out=/dev/${p##*/} ;;
    vm.err) err=/dev/${p##*/} ;;
  esac
done
[ -n "$out" ] && [ -n "$err" ] || die "virtio-serial ports vm.out/vm.err not found"

if [ "$VM_SYSTEMD" = 1 ]; then
  [ -x "$R$VM_SYSTEMD_BIN" ] || die "no $VM_SYSTEMD_BIN in the host root (apt-get install systemd)"
  mkdir -p $R/etc/systemd/system
  cp -a /vmrun/systemd/units/. $R/etc/systemd/system/ || die "copying the units failed"
  cp -a /vmrun/systemd/etc/. $R/etc/ || die "copying the /etc files failed"
  echo "${VM_HOSTNAME:-governor-sandbox}" > $R/etc/hostname
  rm -f $R/.dockerenv
  mkdir -p /dev/virtio-ports
  ln -s "$out" /dev/virtio-ports/vm.out
  ln -s "$err" /dev/virtio-ports/vm.err
  log switch-root
  mount -o move /dev $R/dev || die "moving /dev failed"
  mount -o move /sys $R/sys || die "moving /sys failed"
  mount -o move /proc $R/proc || die "moving /proc failed"
  exec switch_root $R "$VM_SYSTEMD_BIN"
  die "switch_root to $VM_SYSTEMD_BIN failed"
fi

log cmd-start
chroot $R /usr/bin/env -i /bin/bash /run/governor-sandbox/cmd.sh </dev/null >"$out" 2>"$err"
rc=$?
echo "$rc" > /vmrun/rc.tmp && mv /vmrun/rc.tmp /vmrun/rc
log "cmd-done rc=$rc"
sync
poweroff -f
