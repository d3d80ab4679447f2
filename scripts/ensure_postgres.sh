#!/usr/bin/env bash
# Make sure PostgreSQL answers on 127.0.0.1:5432 for the tests (trust authentication from localhost,
# roles `postgres` and `root`, databases `postgres` and `test`). Used by `make test`: the live
# CeleryExecutor test keeps Airflow's metadata and the Celery results there.
#   - something already listens on 5432: nothing to do;
#   - the Debian cluster is installed but down: start it (the postmaster PID is recorded;
#     scripts/stop_services.sh stops it);
#   - not installed and we are root: install postgresql from Debian, trust localhost connections
#     (a throw-away test server, never a production one), start it, create `root` and `test`.
set -u
. "$(dirname "$0")/_services.sh"

port_open 5432 && exit 0
fresh=0
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  apt_install PostgreSQL postgresql || exit 1
  fresh=1
fi
version=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h 2>/dev/null | grep -q "^$version main"; then
  pg_createcluster "$version" main >/dev/null || exit 1
  fresh=1
fi
conf=/etc/postgresql/$version/main
if [ "$fresh" = "1" ]; then
  # test server only: passwordless over TCP from this machine
  sed -i -E 's/^(host\s+all\s+all\s+127\.0\.0\.1\/32\s+)\S+/\1trust/; s/^(local\s+all\s+all\s+)\S+/\1trust/' \
    "$conf/pg_hba.conf"
fi
pg_ctlcluster "$version" main start || { echo "could not start PostgreSQL $version"; exit 1; }
wait_port 5432 || { echo "PostgreSQL did not start on 127.0.0.1:5432"; exit 1; }
datadir=$(sed -n "s/^data_directory\s*=\s*'\(.*\)'.*/\1/p" "$conf/postgresql.conf")
record_started postgresql "$(head -1 "${datadir:-/var/lib/postgresql/$version/main}/postmaster.pid")" INT
if [ "$fresh" = "1" ]; then
  psql -h 127.0.0.1 -U postgres -qc "CREATE ROLE root SUPERUSER LOGIN" 2>/dev/null
  psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE test OWNER root" 2>/dev/null
fi
exit 0
