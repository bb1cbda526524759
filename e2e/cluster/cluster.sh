#!/usr/bin/env bash
# A real single-node Kubernetes cluster running as host processes (in the
# spirit of Kubernetes' hack/local-up-cluster.sh), for geodb's e2e tests.
#
# Usage: e2e/cluster/cluster.sh COMMAND
#   up           install what is missing (apt-get, Go builds), start the
#                cluster (or reuse/repair a running one), import the images of
#                ${GEODB_CACHE:-~/.cache/geodb}/images/*.tar and wait until the
#                node is Ready, DNS answers and a pod runs
#   down         stop everything and remove all state (processes, mounts,
#                network namespaces, iptables rules, interfaces, files)
#   status       print the health of every component (exit 1 if not all healthy)
#   load-images  import every ${GEODB_CACHE:-~/.cache/geodb}/images/*.tar
#                (docker-archive) into containerd's k8s.io namespace
#   kubeconfig   print the path of the admin kubeconfig
#   test-image   build and import geodb/busybox:test (used by smoke.sh)
#
# Environment: GEODB_CLUSTER_DIR (state, default /var/lib/geodb-cluster),
# GEODB_CACHE (binaries and images, default ~/.cache/geodb).
# Needs root. Components: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy (iptables), containerd (own instance),
# CoreDNS (host process) and a directory-backed `local` volume provisioner.
set -euo pipefail

# ---- configuration -----------------------------------------------------------
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
BUILD_TOOLS="$REPO_ROOT/e2e/tools/build-tools.sh"

CACHE="${GEODB_CACHE:-$HOME/.cache/geodb}"
STATE="${GEODB_CLUSTER_DIR:-/var/lib/geodb-cluster}"
STATE="${STATE%/}"
# containerd's state, socket and runc root (runtime data, not persistent).
CTRD_RUN=/run/geodb-containerd
CTRD_SOCK="$CTRD_RUN/containerd.sock"
LOCK_FILE=/run/geodb-cluster.lock

K8S_VERSION=v1.34.4
ETCD_VERSION=v3.6.16
COREDNS_VERSION=v1.15.0
K8S_BIN="$CACHE/k8s-$K8S_VERSION"
ETCD_BIN="$CACHE/etcd-$ETCD_VERSION/etcd"
COREDNS_BIN="$CACHE/coredns-$COREDNS_VERSION/coredns"
PROVISIONER_BIN="$CACHE/provisioner/provisioner"
IMAGES_DIR="$CACHE/images"
# Images this script builds itself (kept out of $IMAGES_DIR, which is another
# producer's).
OWN_IMAGES_DIR="$CACHE/cluster-images"
PAUSE_IMAGE=geodb.local/pause:3.10
TEST_IMAGE=geodb/busybox:test

NODE_NAME=geodb-node
NODE_DEV=geodb0
NODE_IP=10.200.0.1
API_PORT=6443
SERVICE_CIDR=10.96.0.0/16
API_SVC_IP=10.96.0.1
DNS_SVC_IP=10.96.0.10
POD_CIDR=10.88.0.0/16
POD_GW=10.88.0.1
CNI_BRIDGE=geodb-cni0
CNI_NET=geodb
CLUSTER_DOMAIN=cluster.local
PROVISIONER_NAME=geodb.io/local
SERVER="https://$NODE_IP:$API_PORT"

ETCD_CLIENT_PORT=2379
ETCD_PEER_PORT=2380
KCM_PORT=10257
SCHED_PORT=10259
KUBELET_PORT=10250
KUBELET_HEALTHZ_PORT=10248
PROXY_METRICS_PORT=10249
PROXY_HEALTHZ_PORT=10256
DNS_HEALTH_PORT=18080
DNS_READY_PORT=18181

PKI="$STATE/pki"
LOGS="$STATE/logs"
RUN="$STATE/run"
KCFG="$STATE/kubeconfigs"
ADMIN_KUBECONFIG="$STATE/kubeconfig"
KUBELET_ROOT="$STATE/kubelet"
POD_LOGS="$STATE/pod-logs"
VOLUMES="$STATE/volumes"
CNI_CONF_DIR="$STATE/cni/net.d"
CNI_IPAM_DIR="$STATE/cni/ipam"
CTRD_ROOT="$STATE/containerd"
IMPORTED_DB="$STATE/images.imported"
SYSCTL_ORIG="$STATE/sysctl.orig"
CNI_BIN_DIR=/usr/lib/cni
CNI_CACHE_DIR=/var/lib/cni

# In start order. `down` stops them in reverse.
COMPONENTS=(etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy coredns provisioner)

# Sysctls that we, kubelet (protectKernelDefaults=false) or kube-proxy change;
# their values before `up` are restored by `down`.
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
	vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
	kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet)

# Our own clients talk to our own addresses directly, never through a proxy.
export NO_PROXY="${NO_PROXY:+$NO_PROXY,}$NODE_IP,127.0.0.1,localhost"
export no_proxy="$NO_PROXY"
DAEMON_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# ---- helpers -----------------------------------------------------------------
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

# ---- prerequisites -----------------------------------------------------------
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

# ---- images ------------------------------------------------------------------
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

# ---- PKI ---------------------------------------------------------------------
# cert NAME CN ORG USAGE SANS: a key and a certificate signed by our CA.
# USAGE: server | client | both. SANS: openssl subjectAltName list or "".
cert() {
	local name="$1" cn="$2" org="$3" usage="$4" sans="$5" subj eku ext
	[ -f "$PKI/$name.crt" ] && [ -f "$PKI/$name.key" ] && return 0
	subj="/CN=$cn"
	[ -z "$org" ] || subj="/O=$org$subj"
	case "$usage" in
	server) eku=serverAuth ;;
	client) eku=clientAuth ;;
	both) eku=serverAuth,clientAuth ;;
	esac
	ext="$(mktemp)"
	{
		echo "basicConstraints=critical,CA:FALSE"
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		echo "extendedKeyUsage=$eku"
		[ -z "$sans" ] || echo "subjectAltName=$sans"
	} >"$ext"
	openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/$name.key.tmp" 2>/dev/null
	openssl req -new -key "$PKI/$name.key.tmp" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
	openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" \
		-set_serial "0x$(openssl rand -hex 16)" -days 3650 -sha256 -extfile "$ext" \
		-out "$PKI/$name.crt.tmp" 2>/dev/null || die "signing the $name certificate failed"
	rm -f "$ext" "$PKI/$name.csr"
	chmod 0600 "$PKI/$name.key.tmp"
	mv -f "$PKI/$name.key.tmp" "$PKI/$name.key"
	mv -f "$PKI/$name.crt.tmp" "$PKI/$name.crt"
}

ensure_pki() {
	mkdir -p "$PKI"
	chmod 0700 "$PKI"
	if [ ! -f "$PKI/ca.crt" ] || [ ! -f "$PKI/ca.key" ]; then
		# A new CA invalidates every certificate signed by the old one.
		rm -f "$PKI"/*.crt "$PKI"/*.key
		openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/ca.key" 2>/dev/null
		openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=geodb-cluster-ca" -days 3650 -sha256 \
			-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
			-out "$PKI/ca.crt" 2>/dev/null || die "creating the CA failed"
		chmod 0600 "$PKI/ca.key"
	fi
	cert apiserver kube-apiserver "" server \
		"IP:$API_SVC_IP,IP:$NODE_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN,DNS:localhost"
	# kube-apiserver -> kubelet (logs, exec, port-forward).
	cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters client ""
	cert admin admin system:masters client ""
	cert kubelet "system:node:$NODE_NAME" system:nodes client ""
	cert kubelet-serving "system:node:$NODE_NAME" system:nodes server "IP:$NODE_IP,DNS:$NODE_NAME"
	cert kube-controller-manager system:kube-controller-manager "" client ""
	cert kube-scheduler system:kube-scheduler "" client ""
	cert kube-proxy system:kube-proxy "" client ""
	cert coredns geodb:coredns "" client ""
	if [ ! -f "$PKI/sa.key" ] || [ ! -f "$PKI/sa.pub" ]; then
		openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key.tmp" 2>/dev/null
		openssl pkey -in "$PKI/sa.key.tmp" -pubout -out "$PKI/sa.pub" 2>/dev/null
		chmod 0600 "$PKI/sa.key.tmp"
		mv -f "$PKI/sa.key.tmp" "$PKI/sa.key"
	fi
}

b64() { base64 -w0 <"$1"; }
# kubeconfig FILE USER CERTNAME
kubeconfig() {
	cat <<EOF | write_if_changed "$1" 0600
apiVersion: v1
kind: Config
clusters:
- name: geodb
  cluster:
    server: $SERVER
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(b64 "$PKI/$3.crt")
    client-key-data: $(b64 "$PKI/$3.key")
contexts:
- name: geodb
  context:
    cluster: geodb
    user: $2
    namespace: default
current-context: geodb
EOF
}

# ---- configuration files -------------------------------------------------------
# Whether this process may lower an oom_score_adj (needs CAP_SYS_RESOURCE).
detect_oom_adj() {
	if [ -z "${RESTRICT_OOM:-}" ]; then
		local caps
		caps="$(awk '/^CapEff:/ { print $2 }' /proc/self/status)"
		if (((0x$caps >> 24) & 1)); then
			RESTRICT_OOM=false
			OOM_SCORE_ADJ=-999
		else
			RESTRICT_OOM=true
			OOM_SCORE_ADJ=0
		fi
	fi
}

render_configs() {
	detect_oom_adj
	mkdir -p "$LOGS" "$RUN" "$KCFG" "$KUBELET_ROOT" "$POD_LOGS" "$VOLUMES" "$CNI_CONF_DIR" "$CNI_IPAM_DIR" \
		"$CTRD_ROOT" "$STATE/etc" "$CTRD_RUN"
	kubeconfig "$ADMIN_KUBECONFIG" admin admin
	kubeconfig "$KCFG/kubelet.kubeconfig" "system:node:$NODE_NAME" kubelet
	kubeconfig "$KCFG/kube-controller-manager.kubeconfig" system:kube-controller-manager kube-controller-manager
	kubeconfig "$KCFG/kube-scheduler.kubeconfig" system:kube-scheduler kube-scheduler
	kubeconfig "$KCFG/kube-proxy.kubeconfig" system:kube-proxy kube-proxy
	kubeconfig "$KCFG/coredns.kubeconfig" geodb:coredns coredns

	# containerd: our own instance; nothing shared with a system containerd.
	# Image pulls go to a dead proxy (see start_containerd): images must be
	# imported (load-images), nothing is fetched from the network.
	mkdir -p "$CTRD_ROOT/root" "$CTRD_ROOT/certs.d"
	write_if_changed "$STATE/etc/containerd.toml" <<EOF
version = 2
root = "$CTRD_ROOT/root"
state = "$CTRD_RUN/state"
oom_score = 0

[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_RUN/containerd.sock.ttrpc"
[debug]
  address = ""
  level = "info"
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$CTRD_ROOT/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # This machine may deny CAP_SYS_RESOURCE even to root, so a negative
  # oom_score_adj (kubelet asks -998 for every pod sandbox) fails in runc
  # ("failed to update /proc/self/oom_score_adj: Permission denied"): clamp
  # it to containerd's own score instead.
  restrict_oom_score_adj = $RESTRICT_OOM
  max_container_log_line_size = 16384
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    discard_unpacked_layers = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$(command -v runc)"
        Root = "$CTRD_RUN/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$CNI_CONF_DIR"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$CTRD_ROOT/certs.d"
EOF

	# CNI: a bridge with host-local IPAM and masquerade, plus portmap
	# (hostPort). The loopback plugin ($CNI_BIN_DIR/loopback) is run by
	# containerd itself for every pod's lo.
	write_if_changed "$CNI_CONF_DIR/10-$CNI_NET.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NET",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CNI_IPAM_DIR",
        "ranges": [[{ "subnet": "$POD_CIDR", "gateway": "$POD_GW" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF

	write_if_changed "$STATE/etc/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
    cacheTTL: 30s
  x509:
    clientCAFile: $PKI/ca.crt
authorization:
  mode: Webhook
  webhook:
    cacheAuthorizedTTL: 30s
    cacheUnauthorizedTTL: 5s
containerRuntimeEndpoint: unix://$CTRD_SOCK
cgroupDriver: cgroupfs
cgroupsPerQOS: true
enforceNodeAllocatable: ["pods"]
failSwapOn: false
failCgroupV1: false
clusterDNS: ["$DNS_SVC_IP"]
clusterDomain: $CLUSTER_DOMAIN
# No host resolv.conf for pods: dnsPolicy=Default pods get no upstream either.
resolvConf: ""
podLogsDir: $POD_LOGS
serializeImagePulls: false
# Never garbage-collect images: the imported ones cannot be pulled again.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
imageMinimumGCAge: 8760h
# Evict only when the machine is really out of resources.
evictionHard:
  memory.available: "64Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
  imagefs.inodesFree: "1%"
evictionPressureTransitionPeriod: 30s
maxPods: 110
rotateCertificates: false
serverTLSBootstrap: false
protectKernelDefaults: false
shutdownGracePeriod: 0s
shutdownGracePeriodCriticalPods: 0s
nodeStatusUpdateFrequency: 5s
syncFrequency: 10s
fileCheckFrequency: 20s
runtimeRequestTimeout: 5m
volumeStatsAggPeriod: 1m
EOF

	write_if_changed "$STATE/etc/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
oomScoreAdj: $OOM_SCORE_ADJ
clientConnection:
  kubeconfig: $KCFG/kube-proxy.kubeconfig
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
detectLocalMode: ClusterCIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
nodePortAddresses: ["$NODE_IP/32"]
iptables:
  localhostNodePorts: false
  masqueradeAll: false
  minSyncPeriod: 1s
  syncPeriod: 30s
# Leave the host's conntrack sysctls alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF

	write_if_changed "$STATE/etc/kube-scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $KCFG/kube-scheduler.kubeconfig
leaderElection:
  leaderElect: false
EOF

	# CoreDNS: cluster.local (and reverse zones) from the API; every other
	# name is answered NXDOMAIN here: there is no upstream.
	write_if_changed "$STATE/etc/Corefile" <<EOF
$CLUSTER_DOMAIN:53 in-addr.arpa:53 ip6.arpa:53 {
    bind $NODE_IP
    errors
    ready 127.0.0.1:$DNS_READY_PORT
    health 127.0.0.1:$DNS_HEALTH_PORT
    kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
        kubeconfig $KCFG/coredns.kubeconfig geodb
        pods insecure
        ttl 5
    }
    cache 5
    loadbalance
}
.:53 {
    bind $NODE_IP
    errors
    template ANY ANY {
        rcode NXDOMAIN
    }
}
EOF
}

# ---- processes ---------------------------------------------------------------
bin_of() {
	case "$1" in
	etcd) echo "$ETCD_BIN" ;;
	containerd) command -v containerd || echo /usr/bin/containerd ;;
	coredns) echo "$COREDNS_BIN" ;;
	provisioner) echo "$PROVISIONER_BIN" ;;
	*) echo "$K8S_BIN/$1" ;;
	esac
}

# args_of NAME: one argument per line.
args_of() {
	case "$1" in
	etcd)
		printf '%s\n' --name=geodb "--data-dir=$STATE/etcd" \
			"--listen-client-urls=http://127.0.0.1:$ETCD_CLIENT_PORT" \
			"--advertise-client-urls=http://127.0.0.1:$ETCD_CLIENT_PORT" \
			"--listen-peer-urls=http://127.0.0.1:$ETCD_PEER_PORT" \
			"--initial-advertise-peer-urls=http://127.0.0.1:$ETCD_PEER_PORT" \
			"--initial-cluster=geodb=http://127.0.0.1:$ETCD_PEER_PORT" \
			--initial-cluster-state=new --unsafe-no-fsync=true --log-level=warn \
			--auto-compaction-mode=periodic --auto-compaction-retention=10m
		;;
	containerd)
		printf '%s\n' --config "$STATE/etc/containerd.toml"
		;;
	kube-apiserver)
		printf '%s\n' "--etcd-servers=http://127.0.0.1:$ETCD_CLIENT_PORT" \
			"--bind-address=$NODE_IP" "--advertise-address=$NODE_IP" "--secure-port=$API_PORT" \
			"--tls-cert-file=$PKI/apiserver.crt" "--tls-private-key-file=$PKI/apiserver.key" \
			"--client-ca-file=$PKI/ca.crt" \
			"--kubelet-client-certificate=$PKI/apiserver-kubelet-client.crt" \
			"--kubelet-client-key=$PKI/apiserver-kubelet-client.key" \
			"--kubelet-certificate-authority=$PKI/ca.crt" \
			--kubelet-preferred-address-types=InternalIP,Hostname \
			--authorization-mode=Node,RBAC \
			--enable-admission-plugins=NodeRestriction \
			"--service-account-issuer=https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
			"--service-account-key-file=$PKI/sa.pub" \
			"--service-account-signing-key-file=$PKI/sa.key" \
			"--service-cluster-ip-range=$SERVICE_CIDR" \
			--allow-privileged=true --profiling=false --v=1
		;;
	kube-controller-manager)
		local k="$KCFG/kube-controller-manager.kubeconfig"
		printf '%s\n' "--kubeconfig=$k" "--authentication-kubeconfig=$k" "--authorization-kubeconfig=$k" \
			--bind-address=127.0.0.1 "--secure-port=$KCM_PORT" "--cert-dir=$PKI/kcm-serving" \
			"--root-ca-file=$PKI/ca.crt" \
			"--cluster-signing-cert-file=$PKI/ca.crt" "--cluster-signing-key-file=$PKI/ca.key" \
			"--service-account-private-key-file=$PKI/sa.key" \
			--use-service-account-credentials=true \
			"--service-cluster-ip-range=$SERVICE_CIDR" "--cluster-cidr=$POD_CIDR" --allocate-node-cidrs=false \
			'--controllers=*' \
			--leader-elect=false --profiling=false --v=1
		;;
	kube-scheduler)
		local k="$KCFG/kube-scheduler.kubeconfig"
		printf '%s\n' "--config=$STATE/etc/kube-scheduler.yaml" \
			"--authentication-kubeconfig=$k" "--authorization-kubeconfig=$k" \
			--bind-address=127.0.0.1 "--secure-port=$SCHED_PORT" "--cert-dir=$PKI/scheduler-serving" \
			--profiling=false --v=1
		;;
	kubelet)
		printf '%s\n' "--config=$STATE/etc/kubelet.yaml" "--kubeconfig=$KCFG/kubelet.kubeconfig" \
			"--root-dir=$KUBELET_ROOT" "--hostname-override=$NODE_NAME" "--node-ip=$NODE_IP" \
			"--oom-score-adj=$OOM_SCORE_ADJ" --v=1
		;;
	kube-proxy)
		printf '%s\n' "--config=$STATE/etc/kube-proxy.yaml" --v=1
		;;
	coredns)
		printf '%s\n' -conf "$STATE/etc/Corefile"
		;;
	provisioner)
		printf '%s\n' "-kubeconfig=$ADMIN_KUBECONFIG" "-base-dir=$VOLUMES" "-name=$PROVISIONER_NAME" \
			"-node-name=$NODE_NAME" -v=1
		;;
	esac
}

# Files whose content is part of a component's identity: a change restarts it.
configs_of() {
	case "$1" in
	containerd) echo "$STATE/etc/containerd.toml" ;;
	kube-controller-manager) echo "$KCFG/kube-controller-manager.kubeconfig" ;;
	kube-scheduler) printf '%s\n' "$STATE/etc/kube-scheduler.yaml" "$KCFG/kube-scheduler.kubeconfig" ;;
	kubelet) printf '%s\n' "$STATE/etc/kubelet.yaml" "$KCFG/kubelet.kubeconfig" ;;
	kube-proxy) printf '%s\n' "$STATE/etc/kube-proxy.yaml" "$KCFG/kube-proxy.kubeconfig" ;;
	coredns) printf '%s\n' "$STATE/etc/Corefile" "$KCFG/coredns.kubeconfig" ;;
	kube-apiserver) printf '%s\n' "$PKI/apiserver.crt" "$PKI/ca.crt" ;;
	esac
}

spec_hash() {
	local name="$1" bin f
	bin="$(bin_of "$name")"
	{
		echo "$bin"
		stat -c '%s %Y' "$bin" 2>/dev/null || true
		args_of "$name"
		for f in $(configs_of "$name"); do
			cat "$f" 2>/dev/null || true
		done
	} | sha256sum | cut -d' ' -f1
}

# alive PID: the process exists and is not a zombie (this machine's init may
# reap orphans only every few seconds).
alive() {
	local st
	st="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)"
	[ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

# not_alive PID...: none of them is alive.
not_alive() {
	local p
	for p in "$@"; do
		! alive "$p" || return 1
	done
}

# is_ours NAME PID: PID runs NAME's program (any build of it: the binary's
# file name is compared, not its path) for this cluster (its command line
# names $STATE/).
is_ours() {
	local name="$1" pid="$2" exe
	alive "$pid" || return 1
	exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
	exe="${exe% (deleted)}"
	[ -n "$exe" ] && [ "${exe##*/}" = "$(basename "$(bin_of "$name")")" ] || return 1
	tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$STATE/"
}

# pid_of NAME: the pid from the pid file if that process is still ours.
pid_of() {
	local name="$1" pid
	pid="$(cat "$RUN/$name.pid" 2>/dev/null || true)"
	[[ "$pid" =~ ^[0-9]+$ ]] || return 0
	if is_ours "$name" "$pid"; then
		echo "$pid"
	fi
}

healthy() {
	case "$1" in
	etcd) kcurl "http://127.0.0.1:$ETCD_CLIENT_PORT/health" | grep -q '"health":"true"' ;;
	containerd) containerd_healthy ;;
	kube-apiserver) [ "$(curl_admin "$SERVER/readyz" 2>/dev/null)" = ok ] ;;
	kube-controller-manager) [ "$(kcurl -k "https://127.0.0.1:$KCM_PORT/healthz")" = ok ] ;;
	kube-scheduler) [ "$(kcurl -k "https://127.0.0.1:$SCHED_PORT/healthz")" = ok ] ;;
	kubelet) [ "$(kcurl "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz")" = ok ] ;;
	kube-proxy) kcurl "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz" >/dev/null ;;
	coredns) [ "$(kcurl "http://127.0.0.1:$DNS_READY_PORT/ready")" = OK ] ;;
	provisioner) [ -n "$(pid_of provisioner)" ] && since_last_start provisioner | grep -q 'Started provisioner controller' ;;
	esac
}
# The log lines of NAME's current run.
since_last_start() {
	awk -v h="==== " -v n="starting $1" 'index($0, h) == 1 && index($0, n) { buf = ""; next } { buf = buf $0 "\n" } END { printf "%s", buf }' "$LOGS/$1.log" 2>/dev/null
}
containerd_healthy() {
	[ -S "$CTRD_SOCK" ] && timeout 5 ctr --address "$CTRD_SOCK" version >/dev/null 2>&1
}

# ports_of NAME: "proto addr port" lines of the fixed ports it listens on.
ports_of() {
	case "$1" in
	etcd) printf 'tcp 127.0.0.1 %s\n' "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT" ;;
	kube-apiserver) echo "tcp $NODE_IP $API_PORT" ;;
	kube-controller-manager) echo "tcp 127.0.0.1 $KCM_PORT" ;;
	kube-scheduler) echo "tcp 127.0.0.1 $SCHED_PORT" ;;
	kubelet) printf '%s\n' "tcp $NODE_IP $KUBELET_PORT" "tcp 127.0.0.1 $KUBELET_HEALTHZ_PORT" ;;
	kube-proxy) printf 'tcp 127.0.0.1 %s\n' "$PROXY_HEALTHZ_PORT" "$PROXY_METRICS_PORT" ;;
	coredns) printf '%s\n' "udp $NODE_IP 53" "tcp $NODE_IP 53" "tcp 127.0.0.1 $DNS_HEALTH_PORT" "tcp 127.0.0.1 $DNS_READY_PORT" ;;
	esac
}

# check_ports NAME: fails when a fixed port of NAME is taken by another
# process; a leftover of ours (its command line names $STATE) is killed.
check_ports() {
	local name="$1" proto addr port line pid cmd
	while read -r proto addr port; do
		[ -n "$proto" ] || continue
		while read -r line; do
			[ -n "$line" ] || continue
			pid="$(sed -n 's/.*pid=\([0-9]*\).*/\1/p' <<<"$line" | head -1)"
			cmd=""
			[ -z "$pid" ] || cmd="$(tr '\0\n' '  ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-120 || true)"
			if [ -n "$pid" ] && [[ "$cmd" == *"$STATE"* ]]; then
				warn "port $proto/$port is held by a leftover process of this cluster (pid $pid: ${cmd:0:100}); killing it"
				kill -KILL "$pid" 2>/dev/null || true
				wait_until 10 not_alive "$pid" || true
				continue
			fi
			die "$name needs $proto port $addr:$port, but it is in use by ${cmd:-another process} (${line}); stop that process or free the port, then rerun"
		done < <(listeners "$proto" "$addr" "$port")
	done < <(ports_of "$name")
}
# listeners PROTO ADDR PORT: ss lines of sockets that would clash with ADDR:PORT.
listeners() {
	local flag=-Hltnp
	[ "$1" = udp ] && flag=-Hlunp
	ss "$flag" 2>/dev/null | awk -v a="$2" -v p="$3" '{
		n = split($4, parts, ":"); port = parts[n]
		host = substr($4, 1, length($4) - length(port) - 1)
		gsub(/[\[\]]/, "", host); sub(/%.*/, "", host)
		if (port == p && (host == a || host == "0.0.0.0" || host == "*" || host == "::" || host == "::ffff:" a)) print
	}'
}

# start_proc NAME: starts NAME detached (own session), logs to $LOGS/NAME.log.
start_proc() {
	local name="$1" bin args=() envs=(PATH="$DAEMON_PATH" HOME="${HOME:-/root}" LANG=C.UTF-8)
	bin="$(bin_of "$name")"
	mapfile -t args < <(args_of "$name")
	case "$name" in
	containerd)
		# Any image pull goes to a dead proxy on loopback and fails at once:
		# this cluster never fetches anything from the network.
		envs+=(HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 http_proxy=http://127.0.0.1:9
			https_proxy=http://127.0.0.1:9 NO_PROXY= no_proxy=)
		;;
	esac
	{
		echo "==== $(date -Is) cluster.sh starting $name"
		printf '%q ' "$bin" "${args[@]}"
		echo
	} >>"$LOGS/$name.log"
	# setsid: survives the caller's terminal and process group; fd 8 (our
	# lock) is not inherited.
	env -i "${envs[@]}" setsid "$bin" "${args[@]}" </dev/null >>"$LOGS/$name.log" 2>&1 8>&- &
	echo $! >"$RUN/$name.pid"
	spec_hash "$name" >"$RUN/$name.hash"
}

stop_proc() {
	local name="$1" pid grace="${2:-10}"
	pid="$(pid_of "$name")"
	if [ -n "$pid" ]; then
		kill -TERM "$pid" 2>/dev/null || true
		if ! wait_until "$grace" not_alive "$pid"; then
			warn "$name (pid $pid) did not stop in ${grace}s; killing it"
			kill -KILL "$pid" 2>/dev/null || true
			wait_until 5 not_alive "$pid" || true
		fi
	fi
	rm -f "$RUN/$name.pid" "$RUN/$name.hash"
}

# stop_many NAME...: SIGTERM to all at once, then waits (SIGKILL after 10 s).
stop_many() {
	local name pid pids=() names=()
	for name in "$@"; do
		pid="$(pid_of "$name")"
		if [ -n "$pid" ]; then
			pids+=("$pid")
			names+=("$name")
			kill -TERM "$pid" 2>/dev/null || true
		fi
		rm -f "$RUN/$name.pid" "$RUN/$name.hash"
	done
	[ "${#pids[@]}" -gt 0 ] || return 0
	log "stopping ${names[*]}"
	if ! wait_until 10 not_alive "${pids[@]}"; then
		warn "still running after 10s, killing: $(for p in "${pids[@]}"; do alive "$p" && printf '%s ' "$p"; done)"
		for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
		wait_until 5 not_alive "${pids[@]}" || true
	fi
}

log_tail() {
	local name="$1" n="${2:-40}"
	if [ -f "$LOGS/$name.log" ]; then
		echo "---- last $n lines of $LOGS/$name.log ----" >&2
		tail -n "$n" "$LOGS/$name.log" >&2
		echo "----" >&2
	fi
}

# ensure_proc NAME: leaves a healthy instance with the current spec alone,
# (re)starts it otherwise. Does not wait; see await_proc.
ensure_proc() {
	local name="$1" pid
	pid="$(pid_of "$name")"
	if [ -n "$pid" ]; then
		if [ "$(cat "$RUN/$name.hash" 2>/dev/null)" != "$(spec_hash "$name")" ]; then
			log "$name: configuration changed; restarting (pid $pid)"
			stop_proc "$name"
		elif healthy "$name" || wait_until 15 healthy "$name"; then
			log "$name: already running (pid $pid)"
			return 0
		else
			warn "$name (pid $pid) is running but not healthy; restarting it"
			stop_proc "$name"
		fi
	else
		rm -f "$RUN/$name.pid"
	fi
	kill_strays "$name"
	check_ports "$name"
	log "$name: starting"
	start_proc "$name"
}

# kill_strays NAME: kills instances of NAME's binary that belong to this
# cluster (their command line names $STATE) but are not in the pid file,
# e.g. left by an `up` killed between start and pid file.
kill_strays() {
	local name="$1" pid cmd keep
	keep="$(pid_of "$name")"
	for pid in $(pgrep -f -- "$STATE/" 2>/dev/null || true); do
		[ "$pid" != "$keep" ] || continue
		is_ours "$name" "$pid" || continue
		cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
		warn "killing a stray $name of this cluster (pid $pid: ${cmd:0:100})"
		kill -KILL "$pid" 2>/dev/null || true
		wait_until 10 not_alive "$pid" || true
	done
}

# await_proc NAME TIMEOUT: waits until NAME is healthy; fails with its log.
await_proc() {
	local name="$1" timeout="$2" start pid
	start=$(date +%s)
	while :; do
		pid="$(pid_of "$name")"
		if [ -z "$pid" ]; then
			log_tail "$name"
			die "$name exited during startup (log: $LOGS/$name.log)"
		fi
		healthy "$name" && break
		if [ $(($(date +%s) - start)) -ge "$timeout" ]; then
			log_tail "$name"
			die "$name (pid $pid) not healthy after ${timeout}s (log: $LOGS/$name.log)"
		fi
		sleep 0.2
	done
}

# ---- host network ------------------------------------------------------------
save_sysctls() {
	[ -f "$SYSCTL_ORIG" ] && return 0
	local k v
	: >"$SYSCTL_ORIG.tmp"
	for k in "${SYSCTLS[@]}"; do
		v="$(sysctl -n "$k" 2>/dev/null)" || continue
		printf '%s=%s\n' "$k" "$v" >>"$SYSCTL_ORIG.tmp"
	done
	mv -f "$SYSCTL_ORIG.tmp" "$SYSCTL_ORIG"
}
restore_sysctls() {
	[ -f "$SYSCTL_ORIG" ] || return 0
	local kv
	while IFS= read -r kv; do
		[ -n "$kv" ] || continue
		sysctl -q -w "$kv" >/dev/null 2>&1 || warn "could not restore sysctl $kv"
	done <"$SYSCTL_ORIG"
}

setup_network() {
	save_sysctls
	if ! ip link show "$NODE_DEV" >/dev/null 2>&1; then
		# A dummy interface when the kernel has one; else an empty bridge
		# (e.g. kernels built without CONFIG_DUMMY): both just carry an address.
		if ! ip link add "$NODE_DEV" type dummy 2>/dev/null; then
			ip link add "$NODE_DEV" type bridge || die "cannot create the interface $NODE_DEV (neither dummy nor bridge)"
		fi
	fi
	ip addr replace "$NODE_IP/32" dev "$NODE_DEV"
	ip link set "$NODE_DEV" up
	# Service IPs are DNATed by kube-proxy; whatever is not (no endpoint,
	# wrong port) is routed into $NODE_DEV and dropped, never to the gateway.
	ip route replace "$SERVICE_CIDR" dev "$NODE_DEV" src "$NODE_IP"
	sysctl -q -w net.ipv4.ip_forward=1 >/dev/null
	if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
		sysctl -q -w net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1 >/dev/null
	else
		modprobe br_netfilter 2>/dev/null || true
		[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ] &&
			sysctl -q -w net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1 >/dev/null ||
			warn "br_netfilter is not available: pod-to-own-Service traffic may not work"
	fi
	# Pod traffic stays on this machine: pods may talk to pods and to the
	# host's own addresses (INPUT), but nothing they send is forwarded out.
	iptables -w -N GEODB-FORWARD 2>/dev/null || iptables -w -F GEODB-FORWARD
	iptables -w -A GEODB-FORWARD -s "$POD_CIDR" -d "$POD_CIDR" -j RETURN
	iptables -w -A GEODB-FORWARD -s "$POD_CIDR" -j REJECT --reject-with icmp-net-prohibited
	iptables -w -A GEODB-FORWARD -d "$POD_CIDR" ! -i "$CNI_BRIDGE" -j REJECT --reject-with icmp-net-prohibited
	local rule=(FORWARD -m comment --comment "geodb-cluster: keep pod traffic on this machine" -j GEODB-FORWARD)
	iptables -w -C "${rule[@]}" 2>/dev/null || iptables -w -I "${rule[@]:0:1}" 1 "${rule[@]:1}"
}

# ---- cluster objects -----------------------------------------------------------
apply_bootstrap_objects() {
	kc apply --server-side --force-conflicts --field-manager=geodb-cluster -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: geodb:coredns
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: geodb:coredns
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: geodb:coredns
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: geodb:coredns
---
# CoreDNS runs on the host ($NODE_IP); the Service has no selector and its
# EndpointSlice, managed here, points at the node address.
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels:
    k8s-app: kube-dns
    kubernetes.io/name: CoreDNS
spec:
  clusterIP: $DNS_SVC_IP
  ports:
  - name: dns
    port: 53
    protocol: UDP
    targetPort: 53
  - name: dns-tcp
    port: 53
    protocol: TCP
    targetPort: 53
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-host
  namespace: kube-system
  labels:
    kubernetes.io/service-name: kube-dns
    endpointslice.kubernetes.io/managed-by: geodb-cluster-sh
addressType: IPv4
endpoints:
- addresses: ["$NODE_IP"]
  conditions:
    ready: true
  nodeName: $NODE_NAME
ports:
- name: dns
  port: 53
  protocol: UDP
- name: dns-tcp
  port: 53
  protocol: TCP
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: $PROVISIONER_NAME
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
allowVolumeExpansion: true
EOF
}

node_ready() {
	[ "$(kc get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

dns_answers() {
	busybox nslookup "kubernetes.default.svc.$CLUSTER_DOMAIN" "$NODE_IP" 2>/dev/null | grep -q "$API_SVC_IP"
}

# A pod that resolves the apiserver's name and reaches it over its ClusterIP.
run_up_smoke_pod() {
	local ns=default pod=cluster-up-smoke
	kc -n "$ns" delete pod "$pod" --ignore-not-found --wait=true >/dev/null 2>&1 || true
	kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $pod
  namespace: $ns
  labels: {app.kubernetes.io/name: cluster-up-smoke}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 0
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: smoke
    image: $TEST_IMAGE
    imagePullPolicy: Never
    securityContext:
      allowPrivilegeEscalation: false
      capabilities: {drop: [ALL]}
    command:
    - /bin/busybox
    - sh
    - -c
    - |
      set -e
      /bin/busybox nslookup kubernetes.default.svc.$CLUSTER_DOMAIN
      # (not wget -T: busybox 1.35 wget segfaults with -T on https)
      /bin/busybox timeout 10 /bin/busybox wget -q -O - --no-check-certificate https://kubernetes.default.svc.$CLUSTER_DOMAIN/healthz
      echo
      echo smoke-ok
EOF
	local start phase=""
	start=$(date +%s)
	while :; do
		phase="$(kc -n "$ns" get pod "$pod" -o 'jsonpath={.status.phase}' 2>/dev/null || true)"
		case "$phase" in
		Succeeded) break ;;
		Failed)
			kc -n "$ns" logs "$pod" >&2 || true
			kc -n "$ns" describe pod "$pod" >&2 || true
			die "the smoke pod failed (see its log above)"
			;;
		esac
		if [ $(($(date +%s) - start)) -ge 120 ]; then
			kc -n "$ns" describe pod "$pod" >&2 || true
			kc -n "$ns" logs "$pod" >&2 || true
			log_tail kubelet 30
			die "the smoke pod did not finish in 120s (phase: ${phase:-none})"
		fi
		sleep 0.3
	done
	kc -n "$ns" logs "$pod" | grep -q smoke-ok || die "the smoke pod succeeded without printing smoke-ok"
	kc -n "$ns" delete pod "$pod" --wait=false >/dev/null 2>&1 || true
}

# ---- commands --------------------------------------------------------------------
all_healthy() {
	local c pid
	for c in "${COMPONENTS[@]}"; do
		pid="$(pid_of "$c")"
		[ -n "$pid" ] || return 1
		[ "$(cat "$RUN/$c.hash" 2>/dev/null)" = "$(spec_hash "$c")" ] || return 1
		healthy "$c" || return 1
	done
	node_ready
}

cmd_up() {
	need_root up
	take_lock
	log "bringing up the geodb cluster (state: $STATE)"
	phase "prerequisites (apt)"
	ensure_prereqs
	phase "binaries (build-tools.sh)"
	ensure_binaries
	phase "images (pause, test image)"
	ensure_pause_image
	ensure_test_image_tar
	phase "pki and configuration"
	mkdir -p "$STATE"
	ensure_pki
	render_configs

	if all_healthy; then
		phase "fast path: bootstrap objects, images"
		apply_bootstrap_objects
		load_images
		phase "fast path: dns"
		wait_until 30 dns_answers || die "the cluster is up but CoreDNS does not answer (log: $LOGS/coredns.log)"
		phase_end
		log "cluster already up and healthy; reused it"
		print_timings
		log "kubeconfig: $ADMIN_KUBECONFIG"
		return 0
	fi

	phase "free ports"
	# Fail before starting anything when a fixed port is taken.
	local c
	for c in "${COMPONENTS[@]}"; do
		[ -z "$(pid_of "$c")" ] || continue
		kill_strays "$c"
		check_ports "$c"
	done
	phase "network ($NODE_DEV $NODE_IP, iptables guard)"
	setup_network
	phase "etcd + containerd"
	ensure_proc etcd
	ensure_proc containerd
	await_proc etcd 60
	await_proc containerd 60
	phase "import pause and test images"
	import_archive "$OWN_IMAGES_DIR/pause.tar"
	import_archive "$OWN_IMAGES_DIR/busybox-test.tar"
	# The other images (possibly large) are imported while the rest starts.
	local images_log="$LOGS/load-images.log" images_pid
	: >"$images_log"
	load_images >"$images_log" 2>&1 8>&- &
	images_pid=$!
	phase "kube-apiserver"
	ensure_proc kube-apiserver
	await_proc kube-apiserver 120
	phase "bootstrap objects (RBAC, kube-dns, StorageClass)"
	wait_until 30 kc get --raw /readyz || die "the apiserver is not ready for kubectl"
	apply_bootstrap_objects
	phase "controllers, kubelet, kube-proxy, CoreDNS, provisioner"
	for c in kube-controller-manager kube-scheduler kubelet kube-proxy coredns provisioner; do
		ensure_proc "$c"
	done
	for c in kube-controller-manager kube-scheduler kubelet kube-proxy coredns provisioner; do
		await_proc "$c" 120
	done
	phase "node Ready"
	if ! wait_until 120 node_ready; then
		kc describe node "$NODE_NAME" >&2 || true
		log_tail kubelet 40
		die "node $NODE_NAME is not Ready after 120s"
	fi
	phase "CoreDNS answers"
	wait_until 60 dns_answers || {
		log_tail coredns
		die "CoreDNS does not resolve kubernetes.default.svc.$CLUSTER_DOMAIN at $NODE_IP"
	}
	phase "images of $IMAGES_DIR (started earlier)"
	if ! wait "$images_pid"; then
		cat "$images_log" >&2
		die "load-images failed (see above)"
	fi
	sed 's/^/    /' "$images_log" >&2
	phase "smoke pod (DNS + apiserver ClusterIP)"
	wait_until 60 kc -n default get serviceaccount default || die "the default ServiceAccount was not created"
	run_up_smoke_pod
	phase_end
	print_timings
	log "cluster is up. kubeconfig: $ADMIN_KUBECONFIG"
	log "  export KUBECONFIG=$ADMIN_KUBECONFIG"
}

cmd_status() {
	local c pid state rc=0
	printf '%-26s %-8s %s\n' COMPONENT PID STATE
	for c in "${COMPONENTS[@]}"; do
		pid="$(pid_of "$c")"
		if [ -z "$pid" ]; then
			state="not running"
			rc=1
		elif healthy "$c"; then
			state=healthy
			[ "$(cat "$RUN/$c.hash" 2>/dev/null)" = "$(spec_hash "$c")" ] || state="healthy (stale configuration: run up)"
		else
			state="running, NOT healthy (log: $LOGS/$c.log)"
			rc=1
		fi
		printf '%-26s %-8s %s\n' "$c" "${pid:--}" "$state"
	done
	if [ -f "$ADMIN_KUBECONFIG" ] && [ -n "$(pid_of kube-apiserver)" ]; then
		if node_ready; then
			printf '%-26s %-8s %s\n' "node $NODE_NAME" - Ready
		else
			printf '%-26s %-8s %s\n' "node $NODE_NAME" - "NOT Ready"
			rc=1
		fi
		if dns_answers; then
			printf '%-26s %-8s %s\n' "dns $DNS_SVC_IP" - "answers (via $NODE_IP)"
		else
			printf '%-26s %-8s %s\n' "dns $DNS_SVC_IP" - "NOT answering"
			rc=1
		fi
	fi
	echo "state: $STATE   kubeconfig: $ADMIN_KUBECONFIG"
	return "$rc"
}

# ---- down ------------------------------------------------------------------------
# Mount points under our directories (and our pods' network namespaces),
# deepest first.
our_mounts() {
	# (mountinfo escapes blanks as \040; our paths have none.)
	awk '{ print $5 }' /proc/self/mountinfo | while IFS= read -r m; do
		case "$m" in
		"$STATE" | "$STATE"/* | "$CTRD_RUN" | "$CTRD_RUN"/*) echo "$m" ;;
		esac
	done | awk '{ print length($0) "\t" $0 }' | sort -rn -k1,1 | cut -f2- | uniq
}

unmount_ours() {
	local m
	for _ in 1 2 3; do
		local left=0
		while IFS= read -r m; do
			[ -n "$m" ] || continue
			left=1
			umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || warn "cannot unmount $m"
		done < <(our_mounts)
		[ "$left" -eq 1 ] || return 0
	done
	[ -z "$(our_mounts)" ] || warn "mounts left: $(our_mounts | tr '\n' ' ')"
}

# Our pods' network namespaces: the ones containerd made for sandboxes whose
# eth0 has an address in $POD_CIDR on our bridge, plus the ones recorded in
# our containerd's sandbox specs.
our_netns() {
	local ns
	for ns in /run/netns/cni-*; do
		[ -e "$ns" ] || continue
		if grep -qF "$ns" <<<"${NETNS_FROM_CTRD:-}"; then
			echo "$ns"
			continue
		fi
		if nsenter --net="$ns" ip -4 -o addr show 2>/dev/null | awk '{print $4}' | grep -q "^${POD_CIDR%.*.*}\."; then
			echo "$ns"
		fi
	done
}

kill_cgroup_procs() {
	# Every container process of our pods lives under the kubepods cgroup.
	local hier dir pid
	for hier in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods /sys/fs/cgroup/unified/kubepods; do
		[ -d "$hier" ] || continue
		while IFS= read -r dir; do
			while IFS= read -r pid; do
				[ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
			done <"$dir/cgroup.procs"
		done < <(find "$hier" -type d 2>/dev/null)
	done
}

remove_cgroups() {
	local hier
	for hier in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods /sys/fs/cgroup/unified/kubepods; do
		[ -d "$hier" ] || continue
		find "$hier" -depth -type d -exec rmdir {} \; 2>/dev/null || true
		[ ! -d "$hier" ] || warn "cgroup $hier could not be removed (processes left?)"
	done
}

# Removes KUBE-*, CNI-* and GEODB-* chains and every rule that jumps to them
# (kube-proxy, kubelet, the CNI bridge/portmap plugins, us), table by table.
cleanup_iptables() {
	local save restore table dump filtered
	for save in iptables-save ip6tables-save; do
		command -v "$save" >/dev/null 2>&1 || continue
		restore="${save%-save}-restore"
		for table in filter nat mangle raw; do
			dump="$("$save" -t "$table" 2>/dev/null)" || continue
			grep -qE '(KUBE-|CNI-|GEODB-)' <<<"$dump" || continue
			filtered="$(grep -vE '^:(KUBE-|CNI-|GEODB-)|^-A (KUBE-|CNI-|GEODB-)|-j (KUBE-|CNI-|GEODB-)|-g (KUBE-|CNI-|GEODB-)' <<<"$dump")"
			if ! "$restore" -w 5 -T "$table" <<<"$filtered" 2>/dev/null; then
				"$restore" -T "$table" <<<"$filtered" || warn "$restore of table $table failed"
			fi
		done
	done
}

cmd_down() {
	need_root down
	take_lock
	phase "stop components"
	NETNS_FROM_CTRD=""
	# kubelet first, so that it does not react to the others going away.
	stop_many kubelet
	stop_many provisioner coredns kube-proxy kube-scheduler kube-controller-manager kube-apiserver
	stop_many etcd
	phase "stop containers and containerd"
	if [ -n "$(pid_of containerd)" ] && containerd_healthy; then
		# Sandbox network namespaces, for the network cleanup below.
		NETNS_FROM_CTRD="$(ctr_k8s containers ls -q 2>/dev/null | while read -r id; do
			ctr_k8s containers info "$id" 2>/dev/null | grep -o '/var/run/netns/cni-[0-9a-f-]*\|/run/netns/cni-[0-9a-f-]*'
		done | sed 's#^/var/run/#/run/#' | sort -u || true)"
		local t
		for t in $(ctr_k8s tasks ls -q 2>/dev/null); do
			ctr_k8s tasks kill -a -s SIGKILL "$t" >/dev/null 2>&1 || true
		done
	fi
	[ -n "$(pid_of containerd)" ] && log "stopping containerd"
	stop_proc containerd 10
	kill_cgroup_procs
	# Shims of our containerd (their command line names our socket).
	local pid
	for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $CTRD_SOCK" 2>/dev/null || true); do
		kill -KILL "$pid" 2>/dev/null || true
	done
	# Leftover components whose pid files were lost (e.g. a killed `up`).
	local c
	for c in "${COMPONENTS[@]}"; do
		kill_strays "$c"
	done
	if command -v runc >/dev/null 2>&1 && [ -d "$CTRD_RUN/runc" ]; then
		local root id
		for root in "$CTRD_RUN"/runc/*; do
			[ -d "$root" ] || continue
			for id in $(runc --root "$root" list -q 2>/dev/null); do
				runc --root "$root" delete -f "$id" >/dev/null 2>&1 || true
			done
		done
	fi
	remove_cgroups

	phase "network namespaces, interfaces, iptables"
	local ns
	while IFS= read -r ns; do
		[ -n "$ns" ] || continue
		ip netns delete "$(basename "$ns")" 2>/dev/null || { umount "$ns" 2>/dev/null; rm -f "$ns"; }
	done < <(our_netns)
	local dev
	# veths left on our bridge (their netns is gone or was not found).
	for dev in $(ip -o link show master "$CNI_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
		ip link delete "$dev" 2>/dev/null || true
	done
	for dev in "$CNI_BRIDGE" "$NODE_DEV"; do
		if ip link show "$dev" >/dev/null 2>&1; then
			ip link delete "$dev" || warn "cannot delete the interface $dev"
		fi
	done
	cleanup_iptables
	# libcni's cached results of our sandboxes (bridge and containerd's loopback).
	rm -f "$CNI_CACHE_DIR/results/$CNI_NET-"* 2>/dev/null || true
	local sb
	for sb in "$CTRD_ROOT"/root/io.containerd.grpc.v1.cri/sandboxes/*; do
		[ -d "$sb" ] || continue
		rm -f "$CNI_CACHE_DIR/results/cni-loopback-$(basename "$sb")-lo"
	done
	rmdir "$CNI_CACHE_DIR/results" "$CNI_CACHE_DIR" 2>/dev/null || true
	restore_sysctls

	phase "mounts and files"
	unmount_ours
	# kubelet's /var/log/containers symlinks into our pod log dir.
	local l
	for l in /var/log/containers/*.log; do
		[ -L "$l" ] || continue
		case "$(readlink "$l")" in "$POD_LOGS"/*) rm -f "$l" ;; esac
	done
	rmdir /var/log/containers 2>/dev/null || true
	if [ -n "$(our_mounts)" ]; then
		die "mounts remain under $STATE or $CTRD_RUN; not deleting the files (see: findmnt | grep -e $STATE -e $CTRD_RUN)"
	fi
	rm -rf "$STATE" "$CTRD_RUN"
	phase_end
	print_timings
	log "cluster is down; all state removed"
}

cmd_kubeconfig() {
	echo "$ADMIN_KUBECONFIG"
	[ -f "$ADMIN_KUBECONFIG" ] || {
		warn "$ADMIN_KUBECONFIG does not exist yet: run $0 up"
		return 1
	}
}

cmd_load_images() {
	need_root load-images
	take_lock
	load_images
}

cmd_test_image() {
	need_root test-image
	take_lock
	ensure_test_image_tar
	containerd_healthy || die "containerd is not running; run: $0 up"
	import_archive "$OWN_IMAGES_DIR/busybox-test.tar"
}

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'; }

detect_oom_adj
case "${1:-}" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
load-images) cmd_load_images ;;
kubeconfig) cmd_kubeconfig ;;
test-image) cmd_test_image ;;
-h | --help | help) usage ;;
*)
	usage >&2
	exit 2
	;;
esac
