#!/usr/bin/env bash
# Makes sure PostgreSQL and Redis answer on 127.0.0.1 (5432, 6379), installing them from
# Debian/Ubuntu packages and starting them when they are absent. Safe to run again: services
# that already answer are left alone. Installing needs root (or sudo).
#
# The tests and the dev server connect as postgres/postgres; with a fresh install this script
# sets that password (existing trust-auth setups ignore it).
set -euo pipefail

PGHOST=127.0.0.1 PGPORT=${PGPORT:-5432}
REDIS_PORT=${REDIS_PORT:-6379}

say() { printf '\033[1;34m[services]\033[0m %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else say "need root for: $*"; exit 1; fi; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 what=$2
  for _ in $(seq 1 100); do port_open "$port" && return 0; sleep 0.1; done
  say "$what did not come up on port $port"; exit 1
}

apt_updated=
apt_install() {
  [ -n "$apt_updated" ] || { as_root apt-get update -qq; apt_updated=1; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  if port_open "$PGPORT"; then return 0; fi
  if ! command -v pg_lsclusters >/dev/null; then
    say "installing PostgreSQL"
    apt_install postgresql postgresql-client
  fi
  local cluster
  cluster=$(pg_lsclusters --no-header 2>/dev/null | awk 'NR==1 {print $1}')
  if [ -z "$cluster" ]; then
    say "creating a PostgreSQL cluster"
    local ver; ver=$(ls /usr/lib/postgresql | sort -V | tail -n1)
    as_root pg_createcluster "$ver" main >/dev/null
    cluster=$ver
  fi
  say "starting PostgreSQL $cluster"
  as_root pg_ctlcluster --skip-systemctl-redirect "$cluster" main start || as_root pg_ctlcluster "$cluster" main start
  wait_port "$PGPORT" PostgreSQL
  # A fresh install only allows password logins over TCP: give postgres the documented dev password.
  as_root runuser -u postgres -- psql -q -c "ALTER USER postgres PASSWORD 'postgres'" >/dev/null 2>&1 || true
}

ensure_redis() {
  if port_open "$REDIS_PORT"; then return 0; fi
  if ! command -v redis-server >/dev/null; then
    say "installing Redis"
    apt_install redis-server
  fi
  say "starting Redis"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/xenios-dev.log
  wait_port "$REDIS_PORT" Redis
}

ensure_database() {
  # The dev server's database; tests create their own.
  local db=${1:-xenios}
  if command -v psql >/dev/null; then
    PGPASSWORD=postgres psql -h "$PGHOST" -p "$PGPORT" -U postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = '$db'" postgres | grep -q 1 ||
      PGPASSWORD=postgres psql -h "$PGHOST" -p "$PGPORT" -U postgres -qc "CREATE DATABASE \"$db\"" postgres
  fi
}

ensure_postgres
ensure_redis
if [ "${1:-}" = "--dev-db" ]; then ensure_database xenios; fi
say "PostgreSQL on $PGPORT and Redis on $REDIS_PORT are up"
