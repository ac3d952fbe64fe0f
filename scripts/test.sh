#!/usr/bin/env bash
# scripts/test.sh: run governor's whole test suite.  On a fresh Debian 12 machine, as root:
#
#     bash scripts/test.sh
#
# It does everything itself, each step quick when already done:
#   1. apt: qemu-system-x86 busybox-static cgroup-tools postgresql prometheus
#      prometheus-alertmanager umoci (skipped when all are installed);
#   2. the venv .venv with `pip install -e '.[dev]'` (redone when pyproject.toml or the
#      Python changed);
#   3. `governor sandbox setup`: kernel + initramfs of the cgroup v2 test VM;
#   4. a throwaway PostgreSQL (scripts/pg-test-server.sh) unless GOVERNOR_TEST_PG_URL is set;
#   5. every `kernel` test (but the `systemd` ones) inside ONE boot of the sandbox VM (real
#      cgroup v2; the host's /sys/fs/cgroup is never touched), started first and run in the
#      background: its fleet test goes first, and its ten minutes of churn, which take
#      little CPU, leave room for 6-8 beside it (its output is printed when it ends);
#   6. ruff and mypy;
#   7. the unit tests on the host: pytest -m "not kernel and not systemd";
#   8. every `systemd` test, wherever it is under tests/, inside ONE boot of a second VM
#      with systemd as PID 1 (`governor sandbox exec --systemd`: D-Bus, journald,
#      transient units);
#   9. the counts per suite, then a last line `all: N passed, N failed[, N skipped]`.
# Exits non-zero when any step fails, when a VM did not boot or report, when no kernel or
# no systemd test ran, or (with CI=true) when a kernel or systemd test was skipped.
#
# Knobs: PYTHON (python3), GOVERNOR_TEST_RESULTS (results/: junit XML files and
# kernel.log),
# GOVERNOR_VM_MEM (2048 MiB), GOVERNOR_VM_CPUS (2), GOVERNOR_VM_TIMEOUT (4500 s),
# GOVERNOR_SANDBOX_DIR (the sandbox cache), GOVERNOR_STRICT_KERNEL=1 (skips fail, as in CI).
# Extra arguments are passed to every pytest run (e.g. `-k cgroupfs -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
RESULTS=${GOVERNOR_TEST_RESULTS:-$REPO/results}
T0=$(date +%s)
failures=()
pg_ours=0
# what the run started and must stop when it ends (the PostgreSQL test server, if ours)
cleanup() { [ "$pg_ours" = 0 ] || sh scripts/pg-test-server.sh stop >/dev/null 2>&1 || true; }
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }
took() { printf '    (%ss)\n' "$(($(date +%s) - $1))"; }
die() { echo "test.sh: FAIL: $*" >&2; exit 1; }
fail() { failures+=("$*"); echo "test.sh: FAIL: $*" >&2; }

# 1-3. Debian packages, the venv, the sandbox VM kernel (shared with scripts/run.sh)
step "setup: scripts/setup.sh --test"; t=$(date +%s)
bash scripts/setup.sh --test || die "scripts/setup.sh --test failed"
took "$t"
VPY=$REPO/.venv/bin/python

mkdir -p "$RESULTS"
rm -f "$RESULTS/unit.xml" "$RESULTS/kernel.xml" "$RESULTS/systemd.xml" \
  "$RESULTS/kernel.log" "$RESULTS/kernel.failures"

# services the host tests need: a throwaway PostgreSQL (scripts/pg-test-server.sh), started
# here unless GOVERNOR_TEST_PG_URL is set or one is already running, stopped at exit if ours
if [ -z "${GOVERNOR_TEST_PG_URL:-}" ] && [ -f scripts/pg-test-server.sh ]; then
  step "PostgreSQL test server"; t=$(date +%s)
  if pg_url=$(sh scripts/pg-test-server.sh url 2>/dev/null); then
    export GOVERNOR_TEST_PG_URL=$pg_url
    echo "    already running: $pg_url"
  elif pg_env=$(sh scripts/pg-test-server.sh start); then
    pg_ours=1
    eval "$pg_env"
    echo "    started: $GOVERNOR_TEST_PG_URL"
  else
    fail "scripts/pg-test-server.sh start"
  fi
  took "$t"
fi

# 5. kernel tests: all of them in one VM boot.  Python runs ~14x slower in the guest, so the
# host finds the files that hold the selected tests and the guest collects only those.
# vm_suite LABEL MARKEXPR [exec options...] -- [pytest args...]: one boot, junit LABEL.xml
vm_suite() {
  local label=$1 expr=$2; shift 2
  local opts=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
  shift
  local rc=0 files=() collected
  collected=$("$VPY" -m pytest -m "$expr" --collect-only -q -p no:cacheprovider "$@" 2>&1) || true
  while IFS= read -r f; do files+=("$f"); done \
    < <(printf '%s\n' "$collected" | grep -oE '^[^ ]+\.py::' | sed 's/::$//' | sort -u)
  if [ ${#files[@]} -eq 0 ]; then
    printf '%s\n' "$collected" | tail -n 15
    fail "$label tests: none collected on the host (pytest -m '$expr' --collect-only)"
    return
  fi
  # the files named in VM_FIRST (when selected) run first, in that order
  local first=() others=() f x
  for f in ${VM_FIRST:-}; do
    for x in "${files[@]}"; do [ "$x" = "$f" ] && first+=("$f"); done
  done
  for x in "${files[@]}"; do
    case " ${VM_FIRST:-} " in *" $x "*) ;; *) others+=("$x") ;; esac
  done
  files=(${first[@]+"${first[@]}"} ${others[@]+"${others[@]}"})
  echo "    ${#files[@]} file(s): ${files[*]}"
  "$VPY" -m governor.sandbox.cli exec "${opts[@]}" \
    --mem "${GOVERNOR_VM_MEM:-2048}" --cpus "${GOVERNOR_VM_CPUS:-2}" \
    --timeout "${GOVERNOR_VM_TIMEOUT:-4500}" --rw "$RESULTS" \
    --env CI --env GOVERNOR_STRICT_KERNEL --env HYPOTHESIS_PROFILE -- \
    "$VPY" -m pytest -m "$expr" -p no:cacheprovider -q --durations=12 \
    --junitxml "$RESULTS/$label.xml" "$@" "${files[@]}" || rc=$?
  case $rc in
    0) ;;
    5) fail "$label tests: pytest collected no $label test in the VM" ;;
    124) fail "$label tests: the VM timed out" ;;
    125) fail "$label tests: the VM did not boot or reported no exit code" ;;
    *) fail "$label tests: pytest exit $rc" ;;
  esac
}
step "kernel tests (sandbox VM, one boot, in the background): pytest -m 'kernel and not systemd'"
kernel_t0=$(date +%s)
# the fleet test (tests/kernel/test_fleet_kernel.py) reaches the host's PostgreSQL from the
# guest: three guest addresses (one per simulated node) forwarded to its port on 127.0.0.1
fleet=()
if [ -n "${GOVERNOR_TEST_PG_URL:-}" ]; then
  if fleet_env=$("$VPY" - <<'PY'
import os
from sqlalchemy.engine import make_url
u = make_url(os.environ["GOVERNOR_TEST_PG_URL"])
if u.host not in ("127.0.0.1", "localhost"):
    raise SystemExit(f"GOVERNOR_TEST_PG_URL's host is {u.host}: the fleet test forwards "
                     "the guest to a PostgreSQL on this host's 127.0.0.1 only")
print(u.port or 5432)
print(u.set(host="10.0.2.101", port=5432).render_as_string(hide_password=False))
PY
  ); then
    pg_port=$(printf '%s\n' "$fleet_env" | sed -n 1p)
    export GOVERNOR_FLEET_PG_URL=$(printf '%s\n' "$fleet_env" | sed -n 2p)
    for a in 101 102 103; do fleet+=(--to-host "10.0.2.$a:5432:$pg_port"); done
    fleet+=(--env GOVERNOR_FLEET_PG_URL)
  fi
fi
# in the background, beside the host's checks and the systemd VM: its output goes to
# kernel.log (printed when it ends), its failures to kernel.failures
kernel_log=$RESULTS/kernel.log
echo "    in the background: output in $kernel_log, printed when it ends"
(
  failures=()
  VM_FIRST=tests/kernel/test_fleet_kernel.py
  vm_suite kernel "kernel and not systemd" ${fleet[@]+"${fleet[@]}"} -- "$@"
  took "$kernel_t0"
  printf '%s\n' ${failures[@]+"${failures[@]}"} > "$RESULTS/kernel.failures"
) > "$kernel_log" 2>&1 &
kernel_pid=$!
# a run that ends early (die, a signal) takes the VM down with it
kill_tree() { local c; for c in $(pgrep -P "$1" || true); do kill_tree "$c"; done
              kill "$1" 2>/dev/null || true; }
trap 'kill_tree "$kernel_pid"; cleanup' EXIT

# 6. static checks (beside the kernel suite)
step "ruff"; t=$(date +%s)
lint_dirs=(); for d in governor tests bench; do [ -d "$d" ] && lint_dirs+=("$d"); done
.venv/bin/ruff check "${lint_dirs[@]}" || fail "ruff check ${lint_dirs[*]}"
took "$t"
step "mypy"; t=$(date +%s)
.venv/bin/mypy || fail "mypy"
took "$t"

# 7. unit tests on the host (beside the kernel suite)
step "unit tests (host): pytest -m 'not kernel and not systemd'"; t=$(date +%s)
rc=0
"$VPY" -m pytest -m "not kernel and not systemd" -p no:cacheprovider -q --junitxml "$RESULTS/unit.xml" "$@" || rc=$?
[ $rc -eq 0 ] || fail "unit tests: pytest exit $rc"
took "$t"

# 8. systemd tests: all of them, wherever they are under tests/, in one boot of a second VM
# with systemd as PID 1 (about twice the bare boot; see docs/operations.md), beside the kernel
# suite's
step "systemd tests (sandbox VM with systemd as PID 1, one boot): pytest -m systemd"
t=$(date +%s)
vm_suite systemd systemd --systemd -- "$@"
took "$t"

# the kernel suite's end: its output, and its failures
step "kernel tests: waiting for the VM (started $(($(date +%s) - kernel_t0)) s ago)"
kt=$(date +%s)
wait "$kernel_pid" || true
cat "$kernel_log"
if [ -f "$RESULTS/kernel.failures" ]; then
  while IFS= read -r f; do [ -z "$f" ] || fail "$f"; done < "$RESULTS/kernel.failures"
else
  fail "kernel tests: the suite's shell ended without a result (see $kernel_log)"
fi
took "$kt"

# 9. summary: counts per suite, the failures, and the totals as the very last line
step "summary ($(($(date +%s) - T0))s in all; reports in $RESULTS)"
for f in "${failures[@]}"; do echo "FAIL $f" >&2; done
strict=(); [ "${CI:-}" = true ] && strict=(--strict-skips)
sum_rc=0
"$VPY" -m governor.sandbox.junit --require-tests "${strict[@]}" \
  "unit=$RESULTS/unit.xml" "kernel!=$RESULTS/kernel.xml" "systemd!=$RESULTS/systemd.xml" \
  || sum_rc=$?
[ ${#failures[@]} -eq 0 ] && [ $sum_rc -eq 0 ]
