#!/usr/bin/env bash
# Make sure a MariaDB server answers on 127.0.0.1:3306 for the tests (user root, empty password,
# database `test`), as on the project's CI machines. Used by `make test`.
#   - something already listens on 3306: nothing to do;
#   - mariadbd is installed but down: start it;
#   - not installed and we are root: install mariadb-server from Debian, start it, and let root
#     log in over TCP with an empty password (a throw-away test server, never a production one).
set -u
port_open() { (echo > /dev/tcp/127.0.0.1/3306) >/dev/null 2>&1; }
wait_up() { for _ in $(seq 1 30); do port_open && return 0; sleep 1; done; return 1; }

port_open && exit 0
fresh=0
if [ ! -x /usr/sbin/mariadbd ]; then
  if [ "$(id -u)" != "0" ]; then
    echo "MariaDB is not running on 127.0.0.1:3306 and not installed. Run:"
    echo "  sudo apt-get install -y mariadb-server && sudo service mariadb start"
    exit 1
  fi
  echo "installing mariadb-server for the tests"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server || exit 1
  fresh=1
fi
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd >/dev/null 2>&1 \
  || (service mariadb start >/dev/null 2>&1) || true
wait_up || { echo "MariaDB did not start on 127.0.0.1:3306"; exit 1; }
if [ "$fresh" = "1" ]; then
  mariadb -uroot -e "CREATE DATABASE IF NOT EXISTS test; ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD(''); FLUSH PRIVILEGES;" || exit 1
fi
exit 0
