# Shared by scripts/ensure_*.sh: record what we start, so `scripts/stop_services.sh` stops only that.
# Sourced, not run. The record is one "<name> <pid> <signal>" line per daemon we started.
SERVICES_DIR="${AIRFLOW_ML_SERVICES_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.services}"
STARTED_FILE="$SERVICES_DIR/started"

port_open() { (echo > "/dev/tcp/127.0.0.1/$1") >/dev/null 2>&1; }
wait_port() { for _ in $(seq 1 "${2:-30}"); do port_open "$1" && return 0; sleep 1; done; return 1; }
# record_started NAME PID SIGNAL: remember that this run started the daemon PID (SIGNAL stops it).
record_started() {
  mkdir -p "$SERVICES_DIR"
  [ -n "$2" ] && echo "$1 $2 $3" >> "$STARTED_FILE"
}
apt_install() {
  if [ "$(id -u)" != "0" ]; then
    echo "$1 is not running and not installed. Run:"
    echo "  sudo apt-get install -y ${*:2}"
    return 1
  fi
  echo "installing ${*:2} for the tests"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${@:2}"
}
