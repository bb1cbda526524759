#!/usr/bin/env bash
# Checks the images images/build.sh wrote, without Kubernetes: unpacks each
# docker-archive (skopeo + umoci) and runs its programs in the unpacked rootfs,
# in private mount and pid namespaces (everything started dies with them).
#
# Usage: images/test-image.sh [TARGET...]
#   TARGET: postgis   $CACHE/images/postgis-$PG_MAJOR.tar: the image config
#                     (user 999:999, PATH, no PGDATA), postgres is uid/gid 999,
#                     then as 999:999: initdb, postgres on a unix socket in
#                     /tmp, CREATE EXTENSION postgis, postgis_full_version(),
#                     pgbouncer --version and a query through pgbouncer,
#                     geodb --help
#           operator  $CACHE/images/operator.tar: user 65532, entrypoint
#                     /geodb, only the expected files; /geodb --help and
#                     /geodb crdgen as 65532
#           ctr       `ctr -n k8s.io images import` of every tar above into a
#                     private, throw-away containerd (skipped when containerd or
#                     ctr is not installed)
#           all       postgis operator ctr (default)
# Environment: PG_MAJOR (17 default, or 15), GEODB_CACHE as for build.sh.
# Exit status 0 only when every check passed; failures print the output.
set -euo pipefail

CACHE="${GEODB_CACHE:-$HOME/.cache/geodb}/images"
PG_MAJOR="${PG_MAJOR:-17}"

log() { echo "test-image: $*" >&2; }
die() {
	echo "test-image: FAIL: $*" >&2
	exit 1
}

want=()
[ "$#" -eq 0 ] && set -- all
for a in "$@"; do
	case "$a" in
	-h | --help)
		sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	all) want+=(postgis operator ctr) ;;
	postgis | operator | ctr) want+=("$a") ;;
	*) die "unknown target '$a' (expected: postgis operator ctr all)" ;;
	esac
done

[ "$(id -u)" -eq 0 ] || die "must run as root (chroot, mounts)"
for c in skopeo umoci jq unshare chroot; do
	command -v "$c" >/dev/null 2>&1 || die "'$c' is not installed (apt-get install skopeo umoci jq util-linux coreutils)"
done

TMP="$(mktemp -d /var/tmp/geodb-image-test.XXXXXX)"
cleanup() {
	# Only our own private namespaces ever mounted anything below $TMP.
	rm -rf --one-file-system "$TMP"
}
trap cleanup EXIT

# unpack TAR DIR: the image's rootfs in DIR/rootfs, its config in DIR/config.json
unpack() {
	local tar="$1" dir="$2"
	[ -f "$tar" ] || die "$tar not found (run images/build.sh first)"
	skopeo --insecure-policy copy --quiet "docker-archive:$tar" "oci:$dir/oci:t" >"$dir.log" 2>&1 ||
		{ cat "$dir.log" >&2; die "skopeo could not read $tar"; }
	umoci unpack --image "$dir/oci:t" "$dir/bundle" >>"$dir.log" 2>&1 ||
		{ cat "$dir.log" >&2; die "umoci could not unpack $tar"; }
	skopeo --insecure-policy inspect --config "docker-archive:$tar" >"$dir/config.json"
	rm -rf "$dir/oci"
}

cfg() { jq -r "$1" "$2/config.json"; }

# ---- postgis ----------------------------------------------------------------------
test_postgis() {
	local tar="$CACHE/postgis-$PG_MAJOR.tar" d="$TMP/postgis-$PG_MAJOR" root user path env_args=() e out
	log "postgis-$PG_MAJOR: unpacking $tar"
	mkdir -p "$d"
	unpack "$tar" "$d"
	root="$d/bundle/rootfs"

	user="$(cfg '.config.User' "$d")"
	[ "$user" = "999:999" ] || die "postgis-$PG_MAJOR: image user is '$user', want 999:999"
	path="$(cfg '.config.Env[] | select(startswith("PATH="))' "$d")"
	case ":${path#PATH=}:" in *":/usr/lib/postgresql/$PG_MAJOR/bin:"*) ;; *) die "postgis-$PG_MAJOR: PATH lacks /usr/lib/postgresql/$PG_MAJOR/bin: $path" ;; esac
	if grep -q '^PGDATA=' <<<"$(cfg '.config.Env[]' "$d")"; then die "postgis-$PG_MAJOR: PGDATA is set in the image"; fi
	grep -q '^postgres:x:999:999:' "$root/etc/passwd" || die "postgis-$PG_MAJOR: postgres is not 999:999: $(grep '^postgres:' "$root/etc/passwd")"
	grep -q '^postgres:x:999:' "$root/etc/group" || die "postgis-$PG_MAJOR: group postgres is not 999"
	[ -x "$root/usr/local/bin/geodb" ] || die "postgis-$PG_MAJOR: /usr/local/bin/geodb missing"
	[ "$(stat -c %u:%g "$root/var/lib/postgresql")" = 999:999 ] || die "postgis-$PG_MAJOR: /var/lib/postgresql not owned by 999"
	# Every owner in the rootfs is a user/group of the rootfs (not of the host).
	e="$(find "$root" -xdev -printf '%U %G %P\n' | awk -v pw="$root/etc/passwd" -v gr="$root/etc/group" '
		BEGIN { FS = ":"; while ((getline l < pw) > 0) { split(l, f, ":"); u[f[3]] = 1 }
		        while ((getline l < gr) > 0) { split(l, f, ":"); g[f[3]] = 1 }; FS = " " }
		!($1 in u) || !($2 in g) { print "/" $3 " (" $1 ":" $2 ")"; exit }')"
	[ -z "$e" ] || die "postgis-$PG_MAJOR: a file owned by ids the rootfs does not know: $e"
	log "postgis-$PG_MAJOR: config ok: user $user, $path, no PGDATA; rootfs $(du -sh "$root" | cut -f1)"

	while IFS= read -r e; do env_args+=("$e"); done < <(cfg '.config.Env[]' "$d")

	log "postgis-$PG_MAJOR: initdb, postgres, CREATE EXTENSION postgis, pgbouncer, geodb as 999:999"
	if ! out="$(run_in_rootfs "$root" 999 "${env_args[@]}" -- /bin/sh -s <<'EOF' 2>&1
set -eu
echo "+ id: $(id)"
cd /tmp
echo "+ initdb"
initdb -D /tmp/pgdata -U postgres --auth=trust --encoding=UTF8 >/tmp/initdb.log 2>&1 || { cat /tmp/initdb.log; exit 1; }
echo "+ pg_ctl start (unix socket in /tmp, no TCP)"
pg_ctl -D /tmp/pgdata -l /tmp/postgres.log -w -t 60 \
	-o "-c listen_addresses='' -c unix_socket_directories=/tmp -c dynamic_shared_memory_type=posix" start >/dev/null || { cat /tmp/postgres.log; exit 1; }
pg_isready -h /tmp -q || { echo "pg_isready failed"; exit 1; }
echo "+ postgis"
psql -h /tmp -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt \
	-c 'CREATE EXTENSION postgis' \
	-c 'SELECT postgis_full_version()' \
	-c "SELECT ST_AsText(ST_Transform(ST_SetSRID(ST_MakePoint(13.4, 52.5), 4326), 3857))" \
	-c 'SHOW server_encoding'
echo "+ pgbouncer --version"
pgbouncer --version
printf '"postgres" ""\n' >/tmp/userlist.txt
cat >/tmp/pgbouncer.ini <<INI
[databases]
postgres = host=/tmp port=5432 dbname=postgres
[pgbouncer]
listen_addr =
listen_port = 6432
unix_socket_dir = /tmp
auth_type = trust
auth_file = /tmp/userlist.txt
pool_mode = transaction
logfile = /tmp/pgbouncer.log
pidfile = /tmp/pgbouncer.pid
INI
echo "+ pgbouncer -d; query through it"
pgbouncer -d /tmp/pgbouncer.ini || { cat /tmp/pgbouncer.log; exit 1; }
i=0; while [ ! -S /tmp/.s.PGSQL.6432 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
psql -h /tmp -p 6432 -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt -c 'SELECT postgis_lib_version()' ||
	{ cat /tmp/pgbouncer.log; exit 1; }
kill "$(cat /tmp/pgbouncer.pid)"
echo "+ geodb --help"
geodb --help | head -n 3
echo "+ pg_ctl stop"
pg_ctl -D /tmp/pgdata -w -m fast stop >/dev/null
echo "OK"
EOF
	)"; then
		echo "$out" >&2
		die "postgis-$PG_MAJOR: run in the rootfs failed"
	fi
	echo "$out" | sed 's/^/    /' >&2
	grep -q '^POSTGIS="' <<<"$out" || die "postgis-$PG_MAJOR: no postgis_full_version() output"
	log "postgis-$PG_MAJOR: PASS"
}

# run_in_rootfs ROOT UID ENV... -- CMD...: CMD as UID:UID (no supplementary
# groups) chrooted in ROOT with only ENV set, stdin passed on, in new mount and
# pid namespaces with /proc, a minimal /dev, /dev/shm and /tmp; returns CMD's status.
run_in_rootfs() {
	local root="$1" uid="$2"
	shift 2
	unshare --mount --pid --fork --propagation private -- /bin/bash -euc '
		root="$1"; uid="$2"; shift 2
		mount -t proc proc "$root/proc"
		mount -t tmpfs -o mode=0755,nosuid tmpfs "$root/dev"
		for n in null zero full random urandom tty; do
			touch "$root/dev/$n"; mount --bind "/dev/$n" "$root/dev/$n"
		done
		mkdir -p "$root/dev/shm" "$root/dev/pts"
		mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
		ln -s /proc/self/fd "$root/dev/fd"
		mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
		envs=()
		while [ "$#" -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
		shift
		# env -i on the host side: the operator rootfs has no env binary.
		exec /usr/bin/env -i HOME=/tmp "${envs[@]}" /usr/sbin/chroot --userspec="$uid:$uid" --groups="$uid" "$root" "$@"
	' run_in_rootfs "$root" "$uid" "$@"
}

# ---- operator -----------------------------------------------------------------------
test_operator() {
	local tar="$CACHE/operator.tar" d="$TMP/operator" root user ep out unexpected
	log "operator: unpacking $tar"
	mkdir -p "$d"
	unpack "$tar" "$d"
	root="$d/bundle/rootfs"
	user="$(cfg '.config.User' "$d")"
	ep="$(cfg '.config.Entrypoint | join(" ")' "$d")"
	[ "$user" = "65532:65532" ] || die "operator: image user is '$user', want 65532:65532"
	[ "$ep" = "/geodb" ] || die "operator: entrypoint is '$ep', want /geodb"
	grep -q '^nonroot:x:65532:65532:' "$root/etc/passwd" || die "operator: no nonroot 65532 in /etc/passwd"
	[ -s "$root/etc/ssl/certs/ca-certificates.crt" ] || die "operator: no CA bundle"
	unexpected="$(cd "$root" && find . ! -type d | grep -vE '^\./(geodb|etc/(passwd|group|nsswitch\.conf|ssl/certs/ca-certificates\.crt)|(usr/)?lib(64|/x86_64-linux-gnu)?/[^/]+\.so[.0-9]*)$' || true)"
	[ -z "$unexpected" ] || die "operator: unexpected files in the rootfs: $unexpected"
	log "operator: config ok: user $user, entrypoint $ep; files: $(cd "$root" && find . ! -type d | sort | tr '\n' ' ')"

	mkdir -p "$root/proc" "$root/dev"
	if ! out="$(run_in_rootfs "$root" 65532 "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" -- /geodb --help 2>&1)"; then
		echo "$out" >&2
		die "operator: /geodb --help failed in the rootfs"
	fi
	echo "$out" | sed 's/^/    /' >&2
	if ! out="$(run_in_rootfs "$root" 65532 -- /geodb crdgen --out-dir /tmp/crds 2>&1)"; then
		echo "$out" >&2
		die "operator: /geodb crdgen failed in the rootfs"
	fi
	echo "$out" | sed 's/^/    /' >&2
	log "operator: PASS"
}

# ---- ctr import ---------------------------------------------------------------------
test_ctr() {
	local d="$TMP/containerd" tars=() t pid out ref
	if ! command -v containerd >/dev/null 2>&1 || ! command -v ctr >/dev/null 2>&1; then
		log "ctr: SKIP (containerd/ctr not installed: apt-get install containerd)"
		return 0
	fi
	for t in "$CACHE/postgis-$PG_MAJOR.tar" "$CACHE/operator.tar"; do
		[ -f "$t" ] && tars+=("$t")
	done
	[ "${#tars[@]}" -gt 0 ] || die "ctr: no image tarballs in $CACHE"
	mkdir -p "$d"
	# A private containerd: own root, state and socket; no CRI plugin, so it
	# cannot interfere with any other containerd on this machine.
	printf 'version = 2\nroot = "%s/root"\nstate = "%s/state"\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "%s/containerd.sock"\n' \
		"$d" "$d" "$d" >"$d/config.toml"
	containerd --config "$d/config.toml" >"$d/containerd.log" 2>&1 &
	pid=$!
	# shellcheck disable=SC2064
	trap "kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; cleanup" EXIT
	for _ in $(seq 1 100); do
		[ -S "$d/containerd.sock" ] && break
		kill -0 "$pid" 2>/dev/null || { cat "$d/containerd.log" >&2; die "ctr: containerd did not start"; }
		sleep 0.1
	done
	for t in "${tars[@]}"; do
		log "ctr: ctr -n k8s.io images import --snapshotter native $t"
		if ! out="$(ctr --address "$d/containerd.sock" -n k8s.io images import --snapshotter native "$t" 2>&1)"; then
			echo "$out" >&2
			die "ctr: import of $t failed"
		fi
		echo "$out" | sed 's/^/    /' >&2
	done
	out="$(ctr --address "$d/containerd.sock" -n k8s.io images ls 2>&1)"
	echo "$out" | sed 's/^/    /' >&2
	for t in "${tars[@]}"; do
		ref="$(sed -n 's/^ref=//p' "$t.stamp" 2>/dev/null || true)"
		[ -z "$ref" ] || grep -q "^$ref " <<<"$out" || die "ctr: $ref not listed after import"
	done
	kill "$pid"
	wait "$pid" 2>/dev/null || true
	trap cleanup EXIT
	log "ctr: PASS"
}

for t in "${want[@]}"; do
	"test_$t"
done
log "all checks passed (${want[*]})"
