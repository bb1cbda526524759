# shellcheck shell=bash
# Sourced by cluster.sh and controlplane.sh: logging, phase timings, the lock,
# waits, kubectl and curl to our own endpoints.

T0=$(date +%s.%N)
log() { printf '%s cluster: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
warn() { printf '%s cluster: WARNING: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
	printf '%s cluster: ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2
	exit 1
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

PHASE_NAME=""
PHASE_T=""
TIMINGS=()
phase() {
	phase_end
	PHASE_NAME="$1"
	PHASE_T=$(now)
	log "== $1"
}
phase_end() {
	if [ -n "$PHASE_NAME" ]; then
		TIMINGS+=("$(printf '%-34s %6ss' "$PHASE_NAME" "$(elapsed "$PHASE_T")")")
		PHASE_NAME=""
	fi
}
print_timings() {
	phase_end
	local t
	log "timings:"
	for t in "${TIMINGS[@]}"; do
		printf '    %s\n' "$t" >&2
	done
	printf '    %-34s %6ss\n' "total" "$(elapsed "$T0")" >&2
}

need_root() {
	[ "$(id -u)" -eq 0 ] || die "must run as root (it creates interfaces, iptables rules, mounts and cgroups); try: sudo $0 $*"
}

take_lock() {
	exec 8>"$LOCK_FILE"
	if ! flock -n 8; then
		log "another cluster.sh holds $LOCK_FILE; waiting"
		flock 8
	fi
}

# wait_until TIMEOUT_SECONDS CMD...: polls CMD (quietly) every 0.2 s.
wait_until() {
	local timeout="$1" start
	shift
	start=$(date +%s)
	until "$@" >/dev/null 2>&1; do
		if [ $(($(date +%s) - start)) -ge "$timeout" ]; then
			return 1
		fi
		sleep 0.2
	done
}

kubectl_bin() {
	if command -v kubectl >/dev/null 2>&1; then
		command -v kubectl
	else
		echo "$CACHE/kubectl-$K8S_VERSION/kubectl"
	fi
}
kc() { "$(kubectl_bin)" --kubeconfig "$ADMIN_KUBECONFIG" --request-timeout=20s "$@"; }

# curl to our own endpoints (never through a proxy).
kcurl() { curl --noproxy '*' -fs --max-time 3 "$@"; }
curl_admin() {
	kcurl --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" "$@"
}

# write_if_changed FILE [MODE]: stdin -> FILE, only when the content differs.
write_if_changed() {
	local file="$1" mode="${2:-0644}" tmp
	tmp="$(mktemp "$file.XXXXXX")"
	cat >"$tmp"
	chmod "$mode" "$tmp"
	if [ -f "$file" ] && cmp -s "$tmp" "$file"; then
		rm -f "$tmp"
	else
		mv -f "$tmp" "$file"
	fi
}
