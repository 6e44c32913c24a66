#!/usr/bin/env bash
# Makes sure PostgreSQL (127.0.0.1:5432, user postgres, trust auth) and RabbitMQ
# (127.0.0.1:5672, guest/guest) are running, installing them from the OS packages when missing,
# and that the service's database exists.
set -euo pipefail

DB_NAME="${CDR_DB_NAME:-cdr}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

log() { printf '[services] %s\n' "$*" >&2; }

port_open() { timeout 1 bash -c "</dev/tcp/127.0.0.1/$1" 2>/dev/null; }

wait_port() {
  local port=$1 what=$2
  for _ in $(seq 1 120); do
    port_open "$port" && return 0
    sleep 0.5
  done
  log "$what did not open port $port"; return 1
}

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    $SUDO apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  if port_open 5432; then return 0; fi
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    log "installing PostgreSQL"
    apt_install postgresql postgresql-client
  fi
  local version
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$version" ]; then
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    $SUDO pg_createcluster "$version" main >/dev/null
  fi
  local hba="/etc/postgresql/$version/main/pg_hba.conf"
  if ! grep -q "cdr-service: local trust" "$hba" 2>/dev/null; then
    # Local development and CI only: trust connections from this machine.
    $SUDO sed -i '1i # cdr-service: local trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nlocal all all trust' "$hba"
  fi
  log "starting PostgreSQL $version"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_port 5432 PostgreSQL
}

ensure_rabbitmq() {
  if port_open 5672; then return 0; fi
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    log "installing RabbitMQ"
    apt_install rabbitmq-server
  fi
  log "starting RabbitMQ"
  $SUDO rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_port 5672 RabbitMQ
  # The port opens before the broker accepts logins; wait for it properly.
  $SUDO rabbitmqctl await_startup >/dev/null 2>&1 || sleep 5
}

ensure_database() {
  if ! command -v psql >/dev/null 2>&1; then apt_install postgresql-client; fi
  for _ in $(seq 1 60); do
    psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1 && break
    sleep 0.5
  done
  if [ "$(psql -h 127.0.0.1 -U postgres -d postgres -tAc "select 1 from pg_database where datname = '$DB_NAME'")" != "1" ]; then
    log "creating database $DB_NAME"
    psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE \"$DB_NAME\""
  fi
}

ensure_prometheus() {
  # The binary only, for the dashboard test (tests/dashboard_promql.rs runs its own server on a
  # free port). No Prometheus service is started: a policy-rc.d that forbids service starts is
  # in place during the install, and a postinst that still fails to start one is not an error.
  if command -v prometheus >/dev/null 2>&1; then return 0; fi
  log "installing Prometheus (binary only, no service)"
  local policy=/usr/sbin/policy-rc.d own_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# cdr-service: no service starts during this install\nexit 101\n' \
      | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    own_policy=1
  fi
  apt_install --no-install-recommends prometheus || log "prometheus package setup reported an error (a service start, most likely); checking the binary"
  # A half-configured package (postinst failed) would break later installs; settle it.
  DEBIAN_FRONTEND=noninteractive $SUDO dpkg --configure -a >/dev/null 2>&1 || true
  [ -z "$own_policy" ] || $SUDO rm -f "$policy"
  if ! command -v prometheus >/dev/null 2>&1; then
    log "prometheus is still missing after the install"; return 1
  fi
}

ensure_postgres
ensure_rabbitmq
ensure_database
ensure_prometheus
log "PostgreSQL and RabbitMQ are up; prometheus is installed"
