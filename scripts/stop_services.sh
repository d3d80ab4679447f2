#!/usr/bin/env bash
# Stop the test services that scripts/ensure_*.sh started in this run (and only those), by PID.
set -u
. "$(dirname "$0")/_services.sh"

[ -f "$STARTED_FILE" ] || exit 0
while read -r name pid sig; do
  [ -n "$pid" ] || continue
  if kill -0 "$pid" 2>/dev/null; then
    kill "-$sig" "$pid" 2>/dev/null
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && { echo "$name (pid $pid) did not stop; killing it"; kill -KILL "$pid"; }
    echo "stopped $name (pid $pid), started for the tests"
  fi
done < "$STARTED_FILE"
rm -f "$STARTED_FILE"
