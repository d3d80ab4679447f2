#!/usr/bin/env bash
# Make sure Redis answers on 127.0.0.1:6379 for the tests (the live CeleryExecutor test's broker).
# Used by `make test`.
#   - something already listens on 6379: nothing to do;
#   - redis-server is installed but down, or not installed and we are root (then apt installs it):
#     start one bound to 127.0.0.1 only, without persistence; its PID is recorded and
#     scripts/stop_services.sh stops it.
set -u
. "$(dirname "$0")/_services.sh"

port_open 6379 && exit 0
if ! command -v redis-server >/dev/null 2>&1; then
  apt_install Redis redis-server || exit 1
fi
mkdir -p "$SERVICES_DIR"
pidfile="$SERVICES_DIR/redis.pid"
redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --pidfile "$pidfile" --save "" --appendonly no \
  --logfile "$SERVICES_DIR/redis.log" --dir "$SERVICES_DIR" || { echo "could not start redis-server"; exit 1; }
wait_port 6379 || { echo "Redis did not start on 127.0.0.1:6379"; exit 1; }
record_started redis "$(cat "$pidfile")" TERM
exit 0
