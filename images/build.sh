#!/usr/bin/env bash
# Builds the geodb container images locally, without Docker, from Debian
# packages, and writes them as docker-archive tarballs (importable with
# `ctr -n k8s.io images import FILE` or `docker load -i FILE`).
#
# Usage: images/build.sh [TARGET...]
#   TARGET: postgis   docker.io/geodb/postgis:<PG_MAJOR>-<postgis x.y>
#                       -> $CACHE/images/postgis-<PG_MAJOR>.tar
#           operator  docker.io/geodb/operator:dev -> $CACHE/images/operator.tar
#           alembic   docker.io/geodb/alembic-sample:dev (config/samples/alembic on Debian
#                       bookworm's python3-alembic/-geoalchemy2/-asyncpg)
#                       -> $CACHE/images/alembic-sample.tar
#           all       all three (default)
#   --refresh-rootfs  re-run debootstrap even if a cached rootfs matches
#
# Environment:
#   PG_MAJOR       17 (default: Debian trixie, postgis 3.5) or 15 (bookworm, postgis 3.3)
#   GEODB_BINARY   the geodb binary to ship (default: <repo>/target/debug/geodb);
#                  a stripped copy goes into the images
#   GEODB_CACHE    cache root (default: $HOME/.cache/geodb); images live in $GEODB_CACHE/images
#   GEODB_DEBIAN_MIRROR / GEODB_DEBIAN_SECURITY_MIRROR
#                  override the mirrors read from /etc/apt/sources.list*
#
# Idempotent: the debootstrap rootfs (and its compressed base layer) is cached,
# keyed by suite + package list + the source of the functions that make it; a
# new geodb binary only adds a new top layer and re-exports the tarball; when
# nothing changed (stamp: hashes of every input) the build is skipped.
# Needs root (debootstrap, chroot). Installs debootstrap, umoci, skopeo and
# binutils with apt-get when they are missing.
set -euo pipefail

IMAGES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$IMAGES_DIR/.." && pwd)"
SCRIPT_PATH="$IMAGES_DIR/$(basename "${BASH_SOURCE[0]}")"
CACHE="${GEODB_CACHE:-$HOME/.cache/geodb}/images"
WORK="$CACHE/work"
PG_MAJOR="${PG_MAJOR:-17}"
GEODB_BINARY="${GEODB_BINARY:-$REPO_DIR/target/debug/geodb}"

REGISTRY_PREFIX="docker.io/geodb"
OPERATOR_REF="$REGISTRY_PREFIX/operator:dev"
ALEMBIC_REF="$REGISTRY_PREFIX/alembic-sample:dev"
# The sample Alembic project's runtime: Debian's packages, no pip.
ALEMBIC_SUITE=bookworm
ALEMBIC_PACKAGES=(python3-alembic python3-geoalchemy2 python3-asyncpg ca-certificates)
# Extra packages in both images' rootfs besides what --variant=minbase brings.
BASE_PACKAGES=(pgbouncer ca-certificates)

log() { echo "build.sh: $*" >&2; }
die() {
	echo "build.sh: ERROR: $*" >&2
	exit 1
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---- arguments -------------------------------------------------------------------
want_postgis=0
want_operator=0
want_alembic=0
refresh_rootfs=0
[ "$#" -eq 0 ] && set -- all
for a in "$@"; do
	case "$a" in
	-h | --help)
		sed -n '2,31p' "$SCRIPT_PATH" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	all)
		want_postgis=1
		want_operator=1
		want_alembic=1
		;;
	postgis) want_postgis=1 ;;
	operator) want_operator=1 ;;
	alembic) want_alembic=1 ;;
	--refresh-rootfs) refresh_rootfs=1 ;;
	*) die "unknown argument '$a' (expected: postgis operator alembic all --refresh-rootfs)" ;;
	esac
done

case "$PG_MAJOR" in
17)
	SUITE=trixie
	POSTGIS_EXPECTED=3.5
	;;
15)
	SUITE=bookworm
	POSTGIS_EXPECTED=3.3
	;;
*) die "PG_MAJOR=$PG_MAJOR is not supported (17: Debian trixie, 15: Debian bookworm)" ;;
esac
PG_PACKAGES=("postgresql-$PG_MAJOR-postgis-3" "${BASE_PACKAGES[@]}")
PG_BINDIR="/usr/lib/postgresql/$PG_MAJOR/bin"
IMAGE_PATH_ENV="/usr/local/sbin:/usr/local/bin:$PG_BINDIR:/usr/sbin:/usr/bin:/sbin:/bin"

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap and chroot need it)"

# ---- prerequisites -----------------------------------------------------------------
# command -> Debian package
declare -A TOOL_PKG=(
	[debootstrap]=debootstrap
	[umoci]=umoci
	[skopeo]=skopeo
	[strip]=binutils
	[ldd]=libc-bin
	[chroot]=coreutils
	[flock]=util-linux
	[unshare]=util-linux
	[sha256sum]=coreutils
)
ensure_tools() {
	local missing_cmds=() pkgs=() c
	for c in "${!TOOL_PKG[@]}"; do
		command -v "$c" >/dev/null 2>&1 || {
			missing_cmds+=("$c")
			pkgs+=("${TOOL_PKG[$c]}")
		}
	done
	[ "${#missing_cmds[@]}" -eq 0 ] && return 0
	mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
	log "missing tools: ${missing_cmds[*]} -> installing Debian packages: ${pkgs[*]}"
	command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install by hand: ${pkgs[*]}"
	apt-get update >"$WORK/apt-update.log" 2>&1 || die "apt-get update failed (see $WORK/apt-update.log); missing: ${missing_cmds[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pkgs[@]}" >"$WORK/apt-install.log" 2>&1 ||
		die "apt-get install ${pkgs[*]} failed (see $WORK/apt-install.log); missing: ${missing_cmds[*]}"
	for c in "${missing_cmds[@]}"; do
		command -v "$c" >/dev/null 2>&1 || die "'$c' still missing after installing ${TOOL_PKG[$c]} (not on PATH=$PATH?)"
	done
}

# The first http(s) URI in the apt sources whose path ends in $1 (debian or debian-security).
apt_source_uri() {
	local want="$1" f
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] || continue
		sed -n -e 's/^[[:space:]]*URIs:[[:space:]]*//p' \
			-e 's/^[[:space:]]*deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\{0,1\}\([^[:space:]]\+\).*/\2/p' "$f"
	done | tr ' ' '\n' | grep -E '^https?://' | sed 's:/*$::' | grep -E "/$want\$" | sed -n 1p
}

pick_mirrors() {
	MIRROR="${GEODB_DEBIAN_MIRROR:-$(apt_source_uri debian)}"
	MIRROR="${MIRROR:-http://deb.debian.org/debian}"
	SECURITY_MIRROR="${GEODB_DEBIAN_SECURITY_MIRROR:-$(apt_source_uri debian-security)}"
	SECURITY_MIRROR="${SECURITY_MIRROR:-${MIRROR%/debian}/debian-security}"
}

debootstrap_script_for() {
	local suite="$1"
	if [ -e "/usr/share/debootstrap/scripts/$suite" ]; then
		echo "/usr/share/debootstrap/scripts/$suite"
	elif [ -e /usr/share/debootstrap/scripts/sid ]; then
		log "this debootstrap has no script for '$suite'; using the 'sid' script"
		echo /usr/share/debootstrap/scripts/sid
	else
		die "debootstrap has neither a '$suite' nor a 'sid' script in /usr/share/debootstrap/scripts"
	fi
}

sha() { sha256sum | cut -c1-64; }

# Stages $GEODB_BINARY (copied first: cargo may replace it at any moment), sets
# BIN_SHA (of the unstripped input) and BIN_STRIPPED.
stage_binary() {
	[ -n "${BIN_STRIPPED:-}" ] && return 0
	[ -f "$GEODB_BINARY" ] || die "geodb binary not found: $GEODB_BINARY (run \`cargo build -p geodb\` in $REPO_DIR, or set GEODB_BINARY)"
	mkdir -p "$WORK/bin"
	cp "$GEODB_BINARY" "$WORK/bin/geodb.in"
	BIN_SHA="$(sha <"$WORK/bin/geodb.in")"
	if [ ! -f "$WORK/bin/geodb" ] || [ "$(cat "$WORK/bin/geodb.sha" 2>/dev/null)" != "$BIN_SHA" ]; then
		strip --strip-all -o "$WORK/bin/geodb.tmp" "$WORK/bin/geodb.in"
		chmod 0755 "$WORK/bin/geodb.tmp"
		chown 0:0 "$WORK/bin/geodb.tmp"
		mv -f "$WORK/bin/geodb.tmp" "$WORK/bin/geodb"
		echo "$BIN_SHA" >"$WORK/bin/geodb.sha"
	fi
	BIN_STRIPPED="$WORK/bin/geodb"
}

# rm -rf that never descends into a mount (a bind-mounted /dev of the host, say).
remove_tree() {
	local dir="$1" m
	[ -e "$dir" ] || return 0
	dir="$(readlink -f "$dir")"
	for m in $(awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts | sort -r); do
		umount -l "$m" || die "cannot unmount $m"
	done
	rm -rf --one-file-system "$dir"
}

# Runs a command in the rootfs with /proc, /sys and /dev available, in a private
# mount namespace (the mounts vanish with it, even on failure).
in_chroot() {
	local root="$1"
	shift
	unshare --mount --propagation private -- /bin/bash -euc '
		root="$1"; shift
		mount -t proc proc "$root/proc"
		mount -t sysfs sysfs "$root/sys" 2>/dev/null || true
		mount --rbind /dev "$root/dev"
		exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"
	' in_chroot "$root" "$@"
}

# ---- the rootfs recipe: the source of these functions is part of the cache key ----
# debootstrap of PACKAGES into DEST, with the suite's point releases and security fixes.
debootstrap_rootfs() { # SUITE DEST PACKAGES...
	local suite="$1" dest="$2"
	shift 2
	local pkgs script t
	pkgs="$(
		IFS=,
		echo "$*"
	)"
	script="$(debootstrap_script_for "$suite")"
	remove_tree "$dest"
	mkdir -p "$dest"
	log "debootstrap --variant=minbase --include=$pkgs $suite $dest $MIRROR"
	t="$(now)"
	# In a private mount namespace: the /proc, /sys and /dev mounts debootstrap
	# makes cannot outlive it, even when it fails.
	if ! unshare --mount --propagation private -- debootstrap --variant=minbase --components=main --include="$pkgs" \
		"$suite" "$dest" "$MIRROR" "$script" >"$dest.debootstrap.log" 2>&1; then
		tail -n 30 "$dest.debootstrap.log" >&2
		[ -f "$dest/debootstrap/debootstrap.log" ] && tail -n 30 "$dest/debootstrap/debootstrap.log" >&2
		die "debootstrap of $suite failed (full log: $dest.debootstrap.log)"
	fi
	log "debootstrap done in $(elapsed "$t")s"
	apply_updates "$suite" "$dest"
}

make_rootfs() { # SUITE PG_MAJOR DEST PACKAGES...
	local suite="$1" pg="$2" dest="$3"
	shift 3
	debootstrap_rootfs "$suite" "$dest" "$@"
	postgres_uid_999 "$dest"
	setup_postgres "$pg" "$dest"
	trim_rootfs "$dest"
}

# Point releases and security fixes, as debian:<suite>-slim has them.
apply_updates() {
	local suite="$1" root="$2" t
	t="$(now)"
	cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR $suite main
deb $MIRROR $suite-updates main
deb $SECURITY_MIRROR $suite-security main
EOF
	printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
	chmod 0755 "$root/usr/sbin/policy-rc.d"
	log "apt-get upgrade in the rootfs ($suite-updates, $suite-security)"
	in_chroot "$root" /bin/sh -ec 'apt-get -q update && apt-get -qy -o Dpkg::Options::=--force-confold dist-upgrade' \
		>"$root.upgrade.log" 2>&1 || {
		tail -n 30 "$root.upgrade.log" >&2
		die "apt-get upgrade in the $suite rootfs failed (log: $root.upgrade.log)"
	}
	rm -f "$root/usr/sbin/policy-rc.d"
	log "upgrade done in $(elapsed "$t")s: $(grep -c '^Setting up ' "$root.upgrade.log" || true) packages updated"
	# The image keeps the official mirror names, not a local one.
	cat >"$root/etc/apt/sources.list" <<EOF
deb http://deb.debian.org/debian $suite main
deb http://deb.debian.org/debian $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
EOF
}

# postgres gets uid/gid 999 (the operator runs pods with runAsUser/fsGroup 999).
postgres_uid_999() {
	local root="$1" old_uid old_gid other
	old_uid="$(awk -F: '$1 == "postgres" { print $3 }' "$root/etc/passwd")"
	old_gid="$(awk -F: '$1 == "postgres" { print $3 }' "$root/etc/group")"
	[ -n "$old_uid" ] && [ -n "$old_gid" ] || die "no postgres user/group in the rootfs"
	if [ "$old_gid" != 999 ]; then
		other="$(awk -F: '$3 == 999 { print $1 }' "$root/etc/group")"
		[ -z "$other" ] || die "gid 999 is already taken by group '$other' in the rootfs"
		in_chroot "$root" groupmod -g 999 postgres
		find "$root" -xdev -gid "$old_gid" -exec chgrp -h 999 {} +
	fi
	if [ "$old_uid" != 999 ]; then
		other="$(awk -F: '$3 == 999 { print $1 }' "$root/etc/passwd")"
		[ -z "$other" ] || die "uid 999 is already taken by user '$other' in the rootfs"
		in_chroot "$root" usermod -u 999 -g 999 postgres
		find "$root" -xdev -uid "$old_uid" -exec chown -h 999 {} +
	fi
	log "postgres: uid $old_uid -> 999, gid $old_gid -> 999"
}

setup_postgres() {
	local pg="$1" root="$2"
	# No cluster baked into the image: geodb runs initdb into the data volume.
	rm -rf "$root/etc/postgresql/$pg/main" "$root/var/lib/postgresql/$pg"
	install -d -m 0755 "$root/etc/postgresql-common/createcluster.d"
	echo 'create_main_cluster = false' >"$root/etc/postgresql-common/createcluster.d/geodb.conf"
	# A snakeoil key made at build time would be shared by every container.
	rm -f "$root/etc/ssl/private/ssl-cert-snakeoil.key" "$root/etc/ssl/certs/ssl-cert-snakeoil.pem"
	find "$root/etc/ssl/certs" -xtype l -delete
	install -d -o 999 -g 999 -m 0755 "$root/var/lib/postgresql"
	install -d -o 999 -g 999 -m 2775 "$root/run/postgresql"
	install -d -o 0 -g 0 -m 0755 "$root/etc/geodb"
	install -d -o 0 -g 0 -m 0755 "$root/usr/local/bin"
}

trim_rootfs() {
	local root="$1" d
	rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/var/cache/debconf/*-old \
		"$root"/var/lib/dpkg/*-old "$root"/var/cache/ldconfig/aux-cache "$root"/debootstrap
	# Docs (the copyright files stay), man and info pages.
	find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete 2>/dev/null || true
	find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
	rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/lintian "$root"/usr/share/linda \
		"$root"/usr/share/postgresql/*/man
	# Message catalogs and locales, except C.UTF-8 and en_US.
	for d in "$root/usr/share/locale" "$root/usr/lib/locale" "$root/usr/share/i18n/locales"; do
		[ -d "$d" ] || continue
		find "$d" -mindepth 1 -maxdepth 1 ! -name 'C.UTF-8' ! -name 'C.utf8' ! -name 'C' \
			! -name 'en_US*' ! -name 'locale.alias' ! -name 'translit_*' ! -name 'i18n*' \
			! -name 'iso14651_t1*' -exec rm -rf {} +
	done
	# Logs and host data debootstrap copied in.
	find "$root/var/log" -type f -delete
	rm -rf "$root"/tmp/* "$root"/var/tmp/* "$root/etc/resolv.conf" "$root/etc/machine-id"
	find "$root/run" -mindepth 1 -maxdepth 1 ! -name lock ! -name postgresql -exec rm -rf {} +
	: >"$root/etc/hostname"
	# Device nodes and mount points are the runtime's.
	rm -rf --one-file-system "${root:?}"/dev/* "${root:?}"/proc/* "${root:?}"/sys/* 2>/dev/null || true
	chmod 1777 "$root/tmp" "$root/var/tmp"
}
# A rootfs of Debian packages alone (no postgres user, no PostgreSQL layout).
make_plain_rootfs() { # SUITE DEST PACKAGES...
	debootstrap_rootfs "$@"
	trim_rootfs "$2"
}
# ---- end of the rootfs recipe ------------------------------------------------------

rootfs_key() {
	{
		echo "suite=$SUITE pg=$PG_MAJOR packages=${PG_PACKAGES[*]}"
		declare -f debootstrap_rootfs make_rootfs apply_updates postgres_uid_999 setup_postgres trim_rootfs
	} | sha
}

alembic_rootfs_key() {
	{
		echo "suite=$ALEMBIC_SUITE packages=${ALEMBIC_PACKAGES[*]}"
		declare -f debootstrap_rootfs make_plain_rootfs apply_updates trim_rootfs
	} | sha
}

# ---- the PostGIS image ---------------------------------------------------------------
build_postgis() {
	local t0 key root layout base_tag out stamp_in postgis_ver ref tag old
	t0="$(now)"
	out="$CACHE/postgis-$PG_MAJOR.tar"
	key="$(rootfs_key)"
	root="$WORK/rootfs/postgis-$PG_MAJOR-${key:0:16}"
	layout="$WORK/oci/postgis-$PG_MAJOR"
	base_tag="base-${key:0:16}"
	stage_binary

	stamp_in="$(printf 'rootfs=%s\nbinary=%s\nscript=%s\n' "$key" "$BIN_SHA" "$(sha <"$SCRIPT_PATH")")"
	if [ "$refresh_rootfs" = 0 ] && [ -f "$out" ] && [ -f "$out.stamp" ] &&
		[ "$(sed -n '1,3p' "$out.stamp")" = "$stamp_in" ] &&
		[ "$(sed -n 's/^tar=//p' "$out.stamp")" = "$(stat -c '%s %Y' "$out")" ]; then
		log "postgis-$PG_MAJOR: up to date ($(sed -n 's/^ref=//p' "$out.stamp") in $out), $(elapsed "$t0")s"
		return 0
	fi

	# 1. The rootfs (debootstrap), cached by key.
	if [ "$refresh_rootfs" = 1 ] || [ ! -f "$root.done" ]; then
		rm -f "$root.done"
		local t1
		t1="$(now)"
		make_rootfs "$SUITE" "$PG_MAJOR" "$root" "${PG_PACKAGES[@]}"
		touch "$root.done"
		log "postgis-$PG_MAJOR: rootfs ready in $(elapsed "$t1")s ($(du -sh "$root" | cut -f1))"
		# Rootfs trees of older keys are of no more use.
		for old in "$WORK/rootfs/postgis-$PG_MAJOR"-*; do
			case "$old" in "$root" | "$root".*) ;; *) remove_tree "$old" ;; esac
		done
		refresh_rootfs=2
	else
		log "postgis-$PG_MAJOR: cached rootfs $root"
	fi
	postgis_ver="$(chroot "$root" dpkg-query -W -f '${Version}' "postgresql-$PG_MAJOR-postgis-3" | sed -E 's/^([0-9]+:)?([0-9]+\.[0-9]+).*/\2/')"
	[ "$postgis_ver" = "$POSTGIS_EXPECTED" ] ||
		log "WARNING: $SUITE has PostGIS $postgis_ver, expected $POSTGIS_EXPECTED; tagging $PG_MAJOR-$postgis_ver"
	tag="$PG_MAJOR-$postgis_ver"
	ref="$REGISTRY_PREFIX/postgis:$tag"

	# 2. The base layer (the whole rootfs), compressed once per rootfs.
	if [ "$refresh_rootfs" = 2 ] || [ ! -f "$layout/index.json" ] ||
		! grep -qx "$base_tag" <<<"$(umoci ls --layout "$layout" 2>/dev/null)"; then
		local t2
		t2="$(now)"
		rm -rf "$layout"
		umoci init --layout "$layout"
		umoci new --image "$layout:$base_tag"
		umoci insert --image "$layout:$base_tag" --history.created_by "debootstrap --variant=minbase --include=$(
			IFS=,
			echo "${PG_PACKAGES[*]}"
		) $SUITE" "$root" /
		log "postgis-$PG_MAJOR: base layer packed in $(elapsed "$t2")s"
	fi

	# 3. The geodb layer and the config, on a fresh copy of the base tag.
	umoci insert --image "$layout:$base_tag" --tag "$tag" --history.created_by "COPY geodb /usr/local/bin/geodb" \
		"$BIN_STRIPPED" /usr/local/bin/geodb
	umoci config --image "$layout:$tag" --no-history \
		--config.user 999:999 \
		--config.env "PATH=$IMAGE_PATH_ENV" \
		--config.env "LANG=C.UTF-8" \
		--config.env "PG_MAJOR=$PG_MAJOR" \
		--config.workingdir /var/lib/postgresql \
		--config.cmd postgres \
		--config.stopsignal SIGINT \
		--config.exposedports 5432/tcp \
		--config.label "org.opencontainers.image.title=geodb-postgis" \
		--config.label "org.opencontainers.image.version=$tag" \
		--config.label "org.opencontainers.image.base.name=debian:$SUITE-slim"
	umoci gc --layout "$layout"

	# 4. docker-archive.
	rm -f "$out.tmp"
	skopeo --insecure-policy copy --quiet "oci:$layout:$tag" "docker-archive:$out.tmp:$ref"
	mv -f "$out.tmp" "$out"
	{
		echo "$stamp_in"
		echo "tar=$(stat -c '%s %Y' "$out")"
		echo "ref=$ref"
	} >"$out.stamp"
	log "postgis-$PG_MAJOR: wrote $ref -> $out ($(du -h "$out" | cut -f1)) in $(elapsed "$t0")s"
}

# ---- the operator image --------------------------------------------------------------
build_operator() {
	local t0 out root layout stamp_in libs lib deps_sha
	t0="$(now)"
	out="$CACHE/operator.tar"
	root="$WORK/rootfs/operator"
	layout="$WORK/oci/operator"
	stage_binary

	# The loader and the shared libraries the binary links (as the host has them).
	mapfile -t libs < <(ldd "$BIN_STRIPPED" | awk '/=>/ && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
	[ "${#libs[@]}" -gt 0 ] || die "ldd found no libraries for $BIN_STRIPPED (a static binary? then drop this check)"
	[ -f /etc/ssl/certs/ca-certificates.crt ] || die "/etc/ssl/certs/ca-certificates.crt missing (apt-get install ca-certificates)"
	deps_sha="$(for lib in "${libs[@]}" /etc/ssl/certs/ca-certificates.crt; do
		echo "$lib $(sha <"$lib")"
	done | sha)"
	stamp_in="$(printf 'deps=%s\nbinary=%s\nscript=%s\n' "$deps_sha" "$BIN_SHA" "$(sha <"$SCRIPT_PATH")")"
	if [ -f "$out" ] && [ -f "$out.stamp" ] &&
		[ "$(sed -n '1,3p' "$out.stamp")" = "$stamp_in" ] &&
		[ "$(sed -n 's/^tar=//p' "$out.stamp")" = "$(stat -c '%s %Y' "$out")" ]; then
		log "operator: up to date ($OPERATOR_REF in $out), $(elapsed "$t0")s"
		return 0
	fi

	remove_tree "$root"
	install -d -m 0755 "$root" "$root/etc" "$root/etc/ssl/certs"
	install -d -m 1777 "$root/tmp"
	install -d -m 0700 -o 65532 -g 65532 "$root/home/nonroot"
	install -m 0755 "$BIN_STRIPPED" "$root/geodb"
	for lib in "${libs[@]}"; do
		install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
	done
	install -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
	printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
	printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
	printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
	chmod 0644 "$root/etc/passwd" "$root/etc/group" "$root/etc/nsswitch.conf"

	rm -rf "$layout"
	umoci init --layout "$layout"
	umoci new --image "$layout:dev"
	umoci insert --image "$layout:dev" --history.created_by "geodb + ldd libraries + ca-certificates" "$root" /
	umoci config --image "$layout:dev" --no-history \
		--config.user 65532:65532 \
		--config.entrypoint /geodb \
		--config.workingdir / \
		--config.env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
		--config.env "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" \
		--config.label "org.opencontainers.image.title=geodb-operator"
	umoci gc --layout "$layout"
	rm -f "$out.tmp"
	skopeo --insecure-policy copy --quiet "oci:$layout:dev" "docker-archive:$out.tmp:$OPERATOR_REF"
	mv -f "$out.tmp" "$out"
	{
		echo "$stamp_in"
		echo "tar=$(stat -c '%s %Y' "$out")"
		echo "ref=$OPERATOR_REF"
	} >"$out.stamp"
	log "operator: wrote $OPERATOR_REF -> $out ($(du -h "$out" | cut -f1)) in $(elapsed "$t0")s"
}

# ---- the sample Alembic image ----------------------------------------------------------
# What a team's migration image looks like (spec.migrations.image): their Alembic project
# on a Python with SQLAlchemy, GeoAlchemy2 and asyncpg; `alembic upgrade head` from it.
build_alembic() {
	local t0 key root layout base_tag out stamp_in project project_sha
	t0="$(now)"
	out="$CACHE/alembic-sample.tar"
	key="$(alembic_rootfs_key)"
	root="$WORK/rootfs/alembic-${key:0:16}"
	layout="$WORK/oci/alembic"
	base_tag="base-${key:0:16}"
	project="$REPO_DIR/config/samples/alembic"
	project_sha="$(cd "$project" && find . -type f ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum | sha)"
	stamp_in="$(printf 'rootfs=%s\nproject=%s\nscript=%s\n' "$key" "$project_sha" "$(sha <"$SCRIPT_PATH")")"
	if [ "$refresh_rootfs" = 0 ] && [ -f "$out" ] && [ -f "$out.stamp" ] &&
		[ "$(sed -n '1,3p' "$out.stamp")" = "$stamp_in" ] &&
		[ "$(sed -n 's/^tar=//p' "$out.stamp")" = "$(stat -c '%s %Y' "$out")" ]; then
		log "alembic: up to date ($ALEMBIC_REF in $out), $(elapsed "$t0")s"
		return 0
	fi
	if [ "$refresh_rootfs" != 0 ] || [ ! -f "$root.done" ]; then
		rm -f "$root.done"
		make_plain_rootfs "$ALEMBIC_SUITE" "$root" "${ALEMBIC_PACKAGES[@]}"
		touch "$root.done"
		for old in "$WORK/rootfs/alembic"-*; do
			case "$old" in "$root" | "$root".*) ;; *) remove_tree "$old" ;; esac
		done
		rm -rf "$layout"
	fi
	if [ ! -f "$layout/index.json" ] || ! grep -qx "$base_tag" <<<"$(umoci ls --layout "$layout" 2>/dev/null)"; then
		rm -rf "$layout"
		umoci init --layout "$layout"
		umoci new --image "$layout:$base_tag"
		umoci insert --image "$layout:$base_tag" --history.created_by "debootstrap --variant=minbase --include=$(
			IFS=,
			echo "${ALEMBIC_PACKAGES[*]}"
		) $ALEMBIC_SUITE" "$root" /
	fi
	# The project, owned by root and read-only to the runtime user.
	rm -rf "$WORK/alembic-app"
	install -d -m 0755 "$WORK/alembic-app"
	(cd "$project" && find . -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 |
		xargs -0 -I{} install -D -m 0644 -o 0 -g 0 {} "$WORK/alembic-app/{}")
	umoci insert --image "$layout:$base_tag" --tag dev --history.created_by "COPY config/samples/alembic /app" \
		"$WORK/alembic-app" /app
	umoci config --image "$layout:dev" --no-history \
		--config.user 65532:65532 \
		--config.workingdir /app \
		--config.env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
		--config.env "LANG=C.UTF-8" \
		--config.env "PYTHONDONTWRITEBYTECODE=1" \
		--config.env "HOME=/tmp" \
		--config.cmd python3 --config.cmd -m --config.cmd alembic --config.cmd upgrade --config.cmd head \
		--config.label "org.opencontainers.image.title=geodb-alembic-sample" \
		--config.label "org.opencontainers.image.base.name=debian:$ALEMBIC_SUITE-slim"
	umoci gc --layout "$layout"
	rm -f "$out.tmp"
	skopeo --insecure-policy copy --quiet "oci:$layout:dev" "docker-archive:$out.tmp:$ALEMBIC_REF"
	mv -f "$out.tmp" "$out"
	{
		echo "$stamp_in"
		echo "tar=$(stat -c '%s %Y' "$out")"
		echo "ref=$ALEMBIC_REF"
	} >"$out.stamp"
	log "alembic: wrote $ALEMBIC_REF -> $out ($(du -h "$out" | cut -f1)) in $(elapsed "$t0")s"
}

# ---- main ----------------------------------------------------------------------------
mkdir -p "$WORK"
exec 9>"$CACHE/.lock"
flock -n 9 || {
	log "another build.sh holds $CACHE/.lock; waiting"
	flock 9
}
ensure_tools
pick_mirrors
[ "$want_postgis" = 1 ] && build_postgis
[ "$want_operator" = 1 ] && build_operator
[ "$want_alembic" = 1 ] && build_alembic
exit 0
