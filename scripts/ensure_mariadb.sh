#!/usr/bin/env bash
# Make sure a MariaDB server answers on 127.0.0.1:3306 for the tests (user root, empty password,
# database `test`), as on the project's CI machines. Used by `make test`.
#   - something already listens on 3306: nothing to do;
#   - mariadbd is installed but down: start it (its PID is recorded; scripts/stop_services.sh stops it);
#   - not installed and we are root: install mariadb-server from Debian, start it, and let root
#     log in over TCP with an empty password (a throw-away test server, never a production one).
set -u
. "$(dirname "$0")/_services.sh"

port_open 3306 && exit 0
fresh=0
if [ ! -x /usr/sbin/mariadbd ]; then
  apt_install MariaDB mariadb-server || exit 1
  fresh=1
fi
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
pidfile=/run/mysqld/airflow-ml-test.pid
start-stop-daemon --start --background --make-pidfile --pidfile "$pidfile" --exec /usr/sbin/mariadbd \
  -- --user=mysql >/dev/null 2>&1 || { echo "could not start mariadbd"; exit 1; }
wait_port 3306 || { echo "MariaDB did not start on 127.0.0.1:3306"; exit 1; }
record_started mariadb "$(cat "$pidfile")" TERM
if [ "$fresh" = "1" ]; then
  mariadb -uroot -e "CREATE DATABASE IF NOT EXISTS test; ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD(''); FLUSH PRIVILEGES;" || exit 1
fi
exit 0
