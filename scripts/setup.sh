#!/usr/bin/env bash
# scripts/setup.sh [--test]: everything governor needs on a fresh Debian 12 machine, as root.
#   - Debian packages: qemu-system-x86 busybox-static (the sandbox VM); with --test also
#     cgroup-tools postgresql prometheus prometheus-alertmanager (peers and services the
#     test suite runs), umoci (writes the OCI image layouts `governor image import`
#     is tested on) and runc (the peer of bench/image_launch); skipped when all are
#     installed;
#   - the venv .venv with `pip install -e '.[dev]'` (redone when pyproject.toml, setup.py,
#     the C accelerators governor/{cgroupfs,metering,exporter}/*.c or the Python changed;
#     gcc and the Python headers build the accelerators, without them governor runs its
#     pure-Python twins);
#   - `governor sandbox setup`: the cgroup v2 test kernel and initramfs (a no-op when done).
# Each step is quick when already done. Used by scripts/run.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
step() { printf '==> %s\n' "$*"; }
die() { echo "setup.sh: FAIL: $*" >&2; exit 1; }
quietly() {  # run a noisy command; show its output only when it fails
  local log; log=$(mktemp); local rc=0
  "$@" >"$log" 2>&1 || rc=$?
  if [ $rc -ne 0 ]; then tail -n 40 "$log" >&2; fi
  rm -f "$log"; return $rc
}

APT_PKGS=(qemu-system-x86 busybox-static)
[ "${1:-}" = --test ] && APT_PKGS+=(cgroup-tools postgresql prometheus prometheus-alertmanager umoci runc)
"$PY" -c 'import ensurepip, venv' 2>/dev/null || APT_PKGS+=(python3-venv)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q ' installed$' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "apt: installing ${missing[*]}"
  [ "$(id -u)" = 0 ] || die "missing Debian packages ${missing[*]}: run as root, or: sudo apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  quietly apt-get update || die "apt-get update failed"
  quietly apt-get install -y --no-install-recommends "${missing[@]}" || die "apt-get install failed"
fi

# the hash covers what `pip install -e` builds from: the metadata, the C accelerators and
# the launcher's client
want="$("$PY" -c 'import sys; print(sys.version.split()[0], sys.executable)') $(cat pyproject.toml setup.py governor/*.h governor/*/*.c | sha256sum | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c '' 2>/dev/null \
   || [ "$(cat .venv/.governor-deps 2>/dev/null)" != "$want" ]; then
  step "venv: .venv with pip install -e '.[dev]'"
  "$PY" -m venv --clear .venv || die "python3 -m venv failed"
  quietly .venv/bin/pip install --disable-pip-version-check -e '.[dev]' || die "pip install -e '.[dev]' failed"
  echo "$want" > .venv/.governor-deps
fi

step "sandbox setup"
.venv/bin/python -m governor.sandbox.cli setup || die "governor sandbox setup failed"
