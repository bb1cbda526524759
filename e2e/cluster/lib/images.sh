# shellcheck shell=bash
# Sourced by cluster.sh: the pause and test images built here, and importing image archives into containerd.

# build_image NAME TAR_OUT CONFIG_ARGS... -- SRC:DEST...
# Packs files into a one-layer OCI image with umoci and converts it to a
# docker-archive with skopeo.
build_image() {
	local name="$1" out="$2"
	shift 2
	local config=()
	while [ "$#" -gt 0 ] && [ "$1" != -- ]; do
		config+=("$1")
		shift
	done
	shift
	local tmp
	tmp="$(mktemp -d "${TMPDIR:-/tmp}/geodb-image.XXXXXX")"
	(
		set -e
		cd "$tmp"
		umoci init --layout oci
		umoci new --image oci:img
		local pair
		for pair in "$@"; do
			umoci insert --image oci:img "${pair%%:*}" "${pair#*:}"
		done
		umoci config --image oci:img --os linux --architecture amd64 "${config[@]}"
		skopeo --insecure-policy copy --quiet oci:oci:img "docker-archive:$tmp/out.tar:$name"
	) >"$tmp.log" 2>&1 || {
		cat "$tmp.log" >&2
		rm -rf "$tmp" "$tmp.log"
		die "building image $name failed"
	}
	mkdir -p "$(dirname "$out")"
	mv -f "$tmp/out.tar" "$out"
	rm -rf "$tmp" "$tmp.log"
}

# The sandbox ("pause") image, from e2e/cluster/pause.c.
ensure_pause_image() {
	local out="$OWN_IMAGES_DIR/pause.tar" stamp
	stamp="$({
		cat "$SCRIPT_DIR/pause.c"
		echo "$PAUSE_IMAGE v1"
	} | sha256sum | cut -d' ' -f1)"
	if [ -f "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ]; then
		return
	fi
	log "building the pause image $PAUSE_IMAGE (gcc -static, umoci, skopeo)"
	local tmp
	tmp="$(mktemp -d)"
	gcc -static -O2 -Wall -o "$tmp/pause" "$SCRIPT_DIR/pause.c" || die "compiling pause.c failed (needs gcc and libc6-dev)"
	strip "$tmp/pause" 2>/dev/null || true
	build_image "$PAUSE_IMAGE" "$out" --config.entrypoint=/pause --config.user=65535:65535 -- "$tmp/pause:/pause"
	rm -rf "$tmp"
	echo "$stamp" >"$out.stamp"
}

# geodb/busybox:test: Debian's static busybox as /bin/busybox, nothing else.
ensure_test_image_tar() {
	local out="$OWN_IMAGES_DIR/busybox-test.tar" stamp
	[ -x /bin/busybox ] && file_is_static /bin/busybox || die "/bin/busybox is not a static binary: apt-get install busybox-static"
	stamp="$({
		sha256sum /bin/busybox
		echo "$TEST_IMAGE v1"
	} | sha256sum | cut -d' ' -f1)"
	if [ -f "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp" ]; then
		return
	fi
	log "building the test image $TEST_IMAGE from busybox-static"
	build_image "$TEST_IMAGE" "$out" --config.cmd=/bin/busybox --config.cmd=sh --config.user=1000:1000 -- "/bin/busybox:/bin/busybox"
	echo "$stamp" >"$out.stamp"
}
file_is_static() {
	# A static ELF has no PT_INTERP (program interpreter) header.
	[ -s "$1" ] && ! LC_ALL=C readelf -l "$1" 2>/dev/null | grep -q 'program interpreter'
}

ctr_k8s() { ctr --address "$CTRD_SOCK" --namespace k8s.io "$@"; }

# import_archive TAR: imports a docker-archive unless the same content (sha256)
# was imported already and its images are still present.
import_archive() {
	local tar="$1" size mtime hash line names=() present
	size=$(stat -c %s "$tar")
	mtime=$(stat -c %Y "$tar")
	touch "$IMPORTED_DB"
	# Lines: sha256 size mtime path<TAB>image,image
	line="$(awk -v p="$tar" -v s="$size" -v m="$mtime" -F'\t' '{ split($1, f, " "); if (f[4] == p && f[2] == s && f[3] == m) print }' "$IMPORTED_DB" | tail -1)"
	if [ -n "$line" ]; then
		hash="${line%% *}"
	else
		hash="$(sha256sum "$tar" | cut -d' ' -f1)"
		line="$(awk -v h="$hash" -F'\t' '{ split($1, f, " "); if (f[1] == h) print }' "$IMPORTED_DB" | tail -1)"
	fi
	if [ -n "$line" ]; then
		IFS=, read -r -a names <<<"${line#*$'\t'}"
		present="$(ctr_k8s images ls -q 2>/dev/null)"
		local n ok=1
		for n in "${names[@]}"; do
			grep -qxF "$n" <<<"$present" || ok=0
		done
		if [ "$ok" -eq 1 ] && [ "${#names[@]}" -gt 0 ]; then
			if ! grep -qF "$hash $size $mtime $tar"$'\t' "$IMPORTED_DB"; then
				printf '%s %s %s %s\t%s\n' "$hash" "$size" "$mtime" "$tar" "${line#*$'\t'}" >>"$IMPORTED_DB"
			fi
			log "image archive $(basename "$tar"): already imported (${names[*]})"
			return 0
		fi
	fi
	local start out
	start=$(now)
	if ! out="$(ctr_k8s images import "$tar" 2>&1)"; then
		printf '%s\n' "$out" >&2
		die "importing $tar into containerd failed"
	fi
	# "unpacking docker.io/geodb/postgis:17-3.5 (sha256:...)...done"
	mapfile -t names < <(awk '/^unpacking /{print $2}' <<<"$out")
	[ "${#names[@]}" -gt 0 ] || {
		printf '%s\n' "$out" >&2
		die "no image found in $tar (expected a docker-archive, e.g. from skopeo/docker save)"
	}
	local joined
	joined="$(
		IFS=,
		echo "${names[*]}"
	)"
	printf '%s %s %s %s\t%s\n' "$hash" "$size" "$mtime" "$tar" "$joined" >>"$IMPORTED_DB"
	log "image archive $(basename "$tar"): imported ${names[*]} ($(elapsed "$start")s)"
}

load_images() {
	containerd_healthy || die "containerd is not running; run: $0 up"
	# Own lock: `up` imports in a background job, which may outlive an
	# interrupted `up`; two imports of the same archive would only waste time.
	(
		exec 7>"$LOCK_FILE.images"
		flock 7
		local tar found=0
		if [ -d "$IMAGES_DIR" ]; then
			for tar in "$IMAGES_DIR"/*.tar; do
				[ -f "$tar" ] || continue
				found=1
				import_archive "$tar"
			done
		fi
		[ "$found" -eq 1 ] || log "no image archives in $IMAGES_DIR"
	)
}
