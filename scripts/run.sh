#!/usr/bin/env bash
# scripts/run.sh: the main job. On a fresh Debian 12 machine, as root: sets everything up
# (scripts/setup.sh), then runs `governor run` with config.example.toml and the example
# policy (examples/policy.d): natively where cgroup v2 with the cpu, io, memory and pids
# controllers is usable, otherwise inside the sandbox VM (a real cgroup v2 kernel under
# QEMU), saying so on the first line, with the metrics port forwarded to the host's
# 127.0.0.1:${GOVERNOR_PORT:-9717}.  Stop it with Ctrl-C.
# Knobs: GOVERNOR_PORT (9717), GOVERNOR_RUN_SECONDS (run that long, then stop; default: until
# Ctrl-C), GOVERNOR_SANDBOX=force (use the VM even on a cgroup v2 host).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${GOVERNOR_PORT:-9717}
native=1
ctrl=/sys/fs/cgroup/cgroup.controllers
if [ "${GOVERNOR_SANDBOX:-}" = force ] || [ ! -r $ctrl ]; then native=0
else for c in cpu io memory pids; do grep -qw $c $ctrl || native=0; done; fi
if [ $native = 1 ]; then
  echo "governor: cgroup v2 is usable on this host: running natively (metrics: http://127.0.0.1:$PORT/metrics)"
else
  echo "governor: this host has no usable cgroup v2 hierarchy (\`governor doctor\` says why): running inside the sandbox VM; metrics at http://127.0.0.1:$PORT/metrics"
fi
bash scripts/setup.sh
if [ $native = 1 ]; then
  exec bash scripts/guest-run.sh
fi
vm_timeout=$(( ${GOVERNOR_RUN_SECONDS:-604800} + 600 ))  # boot, doctor and schema come first
exec .venv/bin/governor sandbox exec --mem 2048 --timeout "$vm_timeout" \
  --port "$PORT:9717" --env GOVERNOR_RUN_SECONDS -- bash scripts/guest-run.sh
