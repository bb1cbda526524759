# shellcheck shell=bash
# Sourced by cluster.sh: the Debian packages and the pinned binaries `up` needs.

# command-or-path -> Debian package
PREREQS=(
	"containerd:containerd" "ctr:containerd" "containerd-shim-runc-v2:containerd"
	"runc:runc"
	"$CNI_BIN_DIR/bridge:containernetworking-plugins" "$CNI_BIN_DIR/host-local:containernetworking-plugins"
	"$CNI_BIN_DIR/portmap:containernetworking-plugins" "$CNI_BIN_DIR/loopback:containernetworking-plugins"
	"iptables:iptables" "ip6tables:iptables" "iptables-save:iptables" "iptables-restore:iptables"
	"ip:iproute2" "ss:iproute2"
	"openssl:openssl" "curl:curl" "skopeo:skopeo" "umoci:umoci"
	"gcc:gcc" "/usr/lib/x86_64-linux-gnu/libc.a:libc6-dev"
	"flock:util-linux" "findmnt:util-linux" "nsenter:util-linux" "mount:mount"
	"awk:mawk" "sha256sum:coreutils" "tar:tar" "pgrep:procps" "readelf:binutils" "strip:binutils"
	"python3:python3" "pip3:python3-pip"
)
ensure_prereqs() {
	local missing=() entry what pkg
	for entry in "${PREREQS[@]}"; do
		what="${entry%%:*}"
		pkg="${entry#*:}"
		if [[ "$what" == /* ]]; then
			[ -e "$what" ] && continue
		else
			command -v "$what" >/dev/null 2>&1 && continue
		fi
		missing+=("$pkg")
	done
	# The test image needs a *static* busybox (Debian's `busybox` is dynamic).
	if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed'; then
		missing+=(busybox-static)
	fi
	if [ "${#missing[@]}" -gt 0 ]; then
		mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
		log "installing missing Debian packages: ${missing[*]}"
		command -v apt-get >/dev/null 2>&1 || die "missing packages ${missing[*]} and no apt-get: install them by hand"
		# Never let a package start a system service (e.g. a system containerd).
		local policy_added=0
		if [ ! -e /usr/sbin/policy-rc.d ]; then
			printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
			chmod 0755 /usr/sbin/policy-rc.d
			policy_added=1
		fi
		local rc=0 apt_log
		apt_log="$(mktemp "${TMPDIR:-/tmp}/geodb-apt.XXXXXX")"
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update >"$apt_log" 2>&1 || rc=$?
		if [ "$rc" -eq 0 ]; then
			DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends \
				"${missing[@]}" >>"$apt_log" 2>&1 || rc=$?
		fi
		[ "$policy_added" -eq 0 ] || rm -f /usr/sbin/policy-rc.d
		if [ "$rc" -ne 0 ]; then
			tail -n 30 "$apt_log" >&2
			die "apt-get could not install: ${missing[*]} (log: $apt_log; run: apt-get update && apt-get install -y ${missing[*]})"
		fi
		rm -f "$apt_log"
	fi
	command -v go >/dev/null 2>&1 || [ -n "$(find_go)" ] ||
		die "'go' is not on PATH: install Go >= 1.26 (https://go.dev/dl/, e.g. into /usr/local/go) to build etcd, Kubernetes and CoreDNS"
	local v
	v="$(containerd --version 2>/dev/null | awk '{print $3}')"
	case "$v" in
	1.6.* | *1.6.*) ;;
	*) warn "containerd $v found; this script is tested with Debian's 1.6.x" ;;
	esac
}
find_go() {
	local g
	for g in /usr/local/go/bin/go /usr/lib/go/bin/go; do
		[ -x "$g" ] && {
			echo "$g"
			return
		}
	done
}

ensure_binaries() {
	if ! command -v go >/dev/null 2>&1; then
		PATH="$(dirname "$(find_go)"):$PATH"
		export PATH
	fi
	local comps=(all)
	command -v kubectl >/dev/null 2>&1 || comps+=(kubectl)
	local start
	start=$(now)
	# Other engineers' builds share the 2 cores: build at a lower priority.
	nice -n 5 bash "$BUILD_TOOLS" "${comps[@]}" 2>&1 | sed -u 's/^/    /' >&2 ||
		die "building the binaries failed (see above); run: $BUILD_TOOLS ${comps[*]}"
	local b
	for b in "$ETCD_BIN" "$K8S_BIN/kube-apiserver" "$K8S_BIN/kube-controller-manager" "$K8S_BIN/kube-scheduler" \
		"$K8S_BIN/kubelet" "$K8S_BIN/kube-proxy" "$COREDNS_BIN" "$PROVISIONER_BIN" "$(kubectl_bin)"; do
		[ -x "$b" ] || die "$b is missing after $BUILD_TOOLS; build it with: $BUILD_TOOLS all"
	done
	log "binaries ready ($(elapsed "$start")s)"
}
