#!/usr/bin/env bash
# The part of scripts/run.sh that runs where cgroup v2 is (natively or in the sandbox VM):
# doctor, the database schema, the plan, then the daemon with config.example.toml and
# examples/policy.d.
set -euo pipefail
cd "$(dirname "$0")/.."
G=(.venv/bin/governor)
ARGS=(--config config.example.toml --policy examples/policy.d)
if [ "${GOVERNOR_SANDBOX:-}" = 1 ]; then
  # inside the VM the metrics port is reached through QEMU's forward, which arrives on the
  # guest's own network address, not its loopback; the VM's network is private to the host
  export GOVERNOR_LISTEN=0.0.0.0:9717
fi
"${G[@]}" doctor "${ARGS[@]}"
if "${G[@]}" db --help >/dev/null 2>&1; then "${G[@]}" db upgrade "${ARGS[@]}"; fi
"${G[@]}" policy plan "${ARGS[@]}"
if [ -n "${GOVERNOR_RUN_SECONDS:-}" ]; then
  rc=0; timeout --signal=TERM "$GOVERNOR_RUN_SECONDS" "${G[@]}" run "${ARGS[@]}" || rc=$?
  [ $rc = 124 ] && rc=0   # stopped by the timer: a clean SIGTERM shutdown
  exit $rc
fi
exec "${G[@]}" run "${ARGS[@]}"
