#!/usr/bin/env bash
# The `make run` demo: start procpoold on a local socket, exercise it, stop it cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR="$PWD/run"
export PROCPOOL_SOCKET="$RUN_DIR/control.sock"
mkdir -p "$RUN_DIR"
LOG="$RUN_DIR/procpoold.log"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

procpoold --state-dir "$RUN_DIR/state" --workers 2 >"$LOG" 2>&1 &
DAEMON=$!
cleanup() {
  if kill -0 "$DAEMON" 2>/dev/null; then kill -TERM "$DAEMON"; wait "$DAEMON" || true; fi
}
trap cleanup EXIT

echo "started procpoold (pid $DAEMON) on $PROCPOOL_SOCKET; its log is $LOG"
for _ in $(seq 1 100); do
  procctl --timeout 1 ping >/dev/null 2>&1 && break
  kill -0 "$DAEMON" 2>/dev/null || { cat "$LOG"; exit 1; }
  sleep 0.1
done

step procctl ping
step procctl validate examples/hello.json
step procctl submit examples/hello.json --wait
JOB=$(procctl --json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"]["list"][-1]["id"])')
step procctl status
step procctl status "$JOB"
step procctl logs "$JOB" -n 12
step procctl pool
step procctl shutdown
wait "$DAEMON"
echo "procpoold exited with status $?"
printf '\n--- daemon log ---\n'
cat "$LOG"
