#!/usr/bin/env bash
# Builds the host binaries the e2e harness runs (etcd, kube-apiserver,
# kube-controller-manager, ...) from pinned Go modules and caches them outside
# the checkout, in ${GEODB_CACHE:-$HOME/.cache/geodb}.
#
# Usage: e2e/tools/build-tools.sh [COMPONENT...]
#   COMPONENT is one of: etcd kube-apiserver kube-controller-manager
#                        kube-scheduler kubelet kube-proxy kubectl coredns
#                        provisioner helm kubeconform, or `all` (everything
#                        but kubectl, helm and kubeconform).
#   Default: etcd kube-apiserver kube-controller-manager kube-scheduler (what
#   the API-server tests run).
#
# Idempotent: a binary is rebuilt only when it is missing or its stamp
# (sha256 of the pinning go.mod + go.sum + ldflags + the module's own *.go
# files other than tools.go) differs.
# Also makes sure `openssl` (used by the harness to make keys) is installed.
set -euo pipefail

K8S_VERSION=v1.34.4
ETCD_VERSION=v3.6.16
# CoreDNS, the volume provisioner and kubectl (only built when asked for) are
# used by e2e/cluster/cluster.sh; their versions are pinned in
# e2e/tools/{coredns,provisioner,kubectl}/go.mod.
COREDNS_VERSION=v1.15.0
# helm and kubeconform (only built when asked for) are used by
# charts/test-chart.sh; pinned in e2e/tools/{helm,kubeconform}/go.mod.
HELM_VERSION=v3.19.5
KUBECONFORM_VERSION=v0.8.0
K8S_COMPONENTS_ALL=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
DEFAULT_COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler)

TOOLS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${GEODB_CACHE:-$HOME/.cache/geodb}"
K8S_OUT="$CACHE/k8s-$K8S_VERSION"
ETCD_OUT="$CACHE/etcd-$ETCD_VERSION"
COREDNS_OUT="$CACHE/coredns-$COREDNS_VERSION"
PROVISIONER_OUT="$CACHE/provisioner"
KUBECTL_OUT="$CACHE/kubectl-$K8S_VERSION"
HELM_OUT="$CACHE/helm-$HELM_VERSION"
KUBECONFORM_OUT="$CACHE/kubeconform-$KUBECONFORM_VERSION"

log() { echo "build-tools: $*" >&2; }
die() { echo "build-tools: ERROR: $*" >&2; exit 1; }

K8S_MINOR="${K8S_VERSION#v1.}"
K8S_MINOR="${K8S_MINOR%%.*}"
K8S_LDFLAGS="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$K8S_MINOR -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/component-base/version.buildDate=2026-01-01T00:00:00Z"
ETCD_LDFLAGS="-s -w"
GO_LDFLAGS="-s -w"
# helm_ldflags: as helm's own Makefile sets them: the version, and the Kubernetes
# version that `helm template`/`helm lint` assume (that of the pinned k8s.io/client-go).
helm_ldflags() {
	local client_go minor flags p
	client_go="$(awk '$1 == "k8s.io/client-go" { print $2 }' "$TOOLS_DIR/helm/go.mod")"
	minor="${client_go#v0.}"
	minor="${minor%%.*}"
	[ -n "$minor" ] || die "no k8s.io/client-go version in $TOOLS_DIR/helm/go.mod"
	flags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
	for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
		flags+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$minor"
	done
	printf '%s' "$flags"
}
KUBECONFORM_LDFLAGS="-s -w -X main.version=$KUBECONFORM_VERSION"

# ---- arguments ---------------------------------------------------------------
want_etcd=0
want_coredns=0
want_provisioner=0
want_kubectl=0
want_helm=0
want_kubeconform=0
want_k8s=()
if [ "$#" -eq 0 ]; then
	set -- "${DEFAULT_COMPONENTS[@]}"
fi
for c in "$@"; do
	case "$c" in
	-h | --help)
		sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'
		exit 0
		;;
	all)
		want_etcd=1
		want_coredns=1
		want_provisioner=1
		want_k8s+=("${K8S_COMPONENTS_ALL[@]}")
		;;
	etcd) want_etcd=1 ;;
	coredns) want_coredns=1 ;;
	provisioner) want_provisioner=1 ;;
	kubectl) want_kubectl=1 ;;
	helm) want_helm=1 ;;
	kubeconform) want_kubeconform=1 ;;
	kube-apiserver | kube-controller-manager | kube-scheduler | kubelet | kube-proxy)
		want_k8s+=("$c")
		;;
	*) die "unknown component '$c' (expected: etcd ${K8S_COMPONENTS_ALL[*]} kubectl coredns provisioner helm kubeconform all)" ;;
	esac
done

# ---- prerequisites -------------------------------------------------------------
ensure_openssl() {
	if command -v openssl >/dev/null 2>&1; then
		return
	fi
	log "openssl not found; installing it with apt-get"
	command -v apt-get >/dev/null 2>&1 || die "openssl is missing and apt-get is not available; install openssl"
	local sudo=()
	if [ "$(id -u)" -ne 0 ]; then
		command -v sudo >/dev/null 2>&1 || die "openssl is missing; install it (apt-get install -y openssl) as root"
		sudo=(sudo)
	fi
	if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends openssl; then
		log "apt-get install failed; running apt-get update first"
		"${sudo[@]}" apt-get update
		DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends openssl
	fi
}
ensure_openssl

if [ "$want_etcd" -eq 0 ] && [ "$want_coredns" -eq 0 ] && [ "$want_provisioner" -eq 0 ] && [ "$want_kubectl" -eq 0 ] &&
	[ "$want_helm" -eq 0 ] && [ "$want_kubeconform" -eq 0 ] && [ "${#want_k8s[@]}" -eq 0 ]; then
	exit 0
fi
command -v go >/dev/null 2>&1 || die "'go' is not on PATH. Install Go >= 1.26 (https://go.dev/dl/) and re-run $0"

sha256() { sha256sum | cut -d' ' -f1; }
# stamp MODULE_DIR LDFLAGS: go.mod, go.sum, the ldflags and the module's own
# sources (tools.go, which only pins dependencies, is left out so that the
# stamps of the etcd and Kubernetes builds depend on go.mod/go.sum alone).
stamp_of() {
	{
		cat "$1/go.mod" "$1/go.sum"
		printf '%s' "$2"
		find "$1" -maxdepth 1 -name '*.go' ! -name tools.go -print | LC_ALL=C sort | while IFS= read -r f; do
			printf '%s\n' "${f##*/}"
			cat "$f"
		done
	} | sha256
}

mkdir -p "$CACHE"
# Serialise concurrent runs (e.g. parallel CI jobs sharing a cache).
if command -v flock >/dev/null 2>&1; then
	exec 9>"$CACHE/.build-tools.lock"
	if ! flock -n 9; then
		log "another build-tools.sh holds $CACHE/.build-tools.lock; waiting"
		flock 9
	fi
fi

# build_set MODULE_DIR OUT_DIR LDFLAGS NAME=PACKAGE...
# Builds the binaries NAME (from Go package PACKAGE, resolved in MODULE_DIR)
# that are missing or stale into OUT_DIR, in one `go build`.
build_set() {
	local moddir="$1" out="$2" ldflags="$3"
	shift 3
	local stamp todo_names=() todo_pkgs=() name pkg
	stamp="$(stamp_of "$moddir" "$ldflags")"
	for pair in "$@"; do
		name="${pair%%=*}"
		pkg="${pair#*=}"
		if [ -x "$out/$name" ] && [ "$(cat "$out/.$name.stamp" 2>/dev/null || true)" = "$stamp" ]; then
			log "$name: up to date ($out/$name)"
		else
			todo_names+=("$name")
			todo_pkgs+=("$pkg")
		fi
	done
	[ "${#todo_names[@]}" -gt 0 ] || return 0

	mkdir -p "$out"
	log "building ${todo_names[*]} into $out (module $moddir); this can take a while"
	local start=$SECONDS tmp
	# Build into a temp dir and move into place, so an interrupted build never
	# leaves a half-written binary that looks usable.
	tmp="$(mktemp -d "$out/.build.XXXXXX")"
	# `go build -o DIR/` names binaries after their package path, which is
	# wrong for etcd (go.etcd.io/etcd/server/v3 -> "server"); name a single
	# binary explicitly.
	local target="$tmp/"
	if [ "${#todo_pkgs[@]}" -eq 1 ]; then
		target="$tmp/${todo_names[0]}"
	fi
	if ! (cd "$moddir" && go build -trimpath -ldflags "$ldflags" -o "$target" "${todo_pkgs[@]}"); then
		rm -rf "$tmp"
		die "go build of ${todo_names[*]} failed (see the output above)"
	fi
	for name in "${todo_names[@]}"; do
		[ -f "$tmp/$name" ] || die "go build produced no binary $tmp/$name"
		mv -f "$tmp/$name" "$out/$name"
		echo "$stamp" >"$out/.$name.stamp"
		log "$name: built $out/$name"
	done
	rm -rf "$tmp"
	log "built ${todo_names[*]} in $((SECONDS - start))s"
}

if [ "$want_etcd" -eq 1 ]; then
	build_set "$TOOLS_DIR/etcd" "$ETCD_OUT" "$ETCD_LDFLAGS" "etcd=go.etcd.io/etcd/server/v3"
fi
if [ "$want_coredns" -eq 1 ]; then
	build_set "$TOOLS_DIR/coredns" "$COREDNS_OUT" "$GO_LDFLAGS" "coredns=."
fi
if [ "$want_provisioner" -eq 1 ]; then
	build_set "$TOOLS_DIR/provisioner" "$PROVISIONER_OUT" "$GO_LDFLAGS" "provisioner=."
fi
if [ "$want_kubectl" -eq 1 ]; then
	# Its own module: k8s.io/kubernetes/cmd/kubectl needs modules that the
	# e2e/tools/k8s go.sum does not pin.
	build_set "$TOOLS_DIR/kubectl" "$KUBECTL_OUT" "$K8S_LDFLAGS -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$K8S_MINOR" "kubectl=."
fi
if [ "$want_helm" -eq 1 ]; then
	HELM_LDFLAGS="$(helm_ldflags)"
	build_set "$TOOLS_DIR/helm" "$HELM_OUT" "$HELM_LDFLAGS" "helm=helm.sh/helm/v3/cmd/helm"
fi
if [ "$want_kubeconform" -eq 1 ]; then
	build_set "$TOOLS_DIR/kubeconform" "$KUBECONFORM_OUT" "$KUBECONFORM_LDFLAGS" "kubeconform=github.com/yannh/kubeconform/cmd/kubeconform"
fi
if [ "${#want_k8s[@]}" -gt 0 ]; then
	pairs=()
	# De-duplicate (e.g. `all kubelet`), keeping the order.
	declare -A seen=()
	for c in "${want_k8s[@]}"; do
		[ -z "${seen[$c]:-}" ] || continue
		seen[$c]=1
		pairs+=("$c=k8s.io/kubernetes/cmd/$c")
	done
	build_set "$TOOLS_DIR/k8s" "$K8S_OUT" "$K8S_LDFLAGS" "${pairs[@]}"
fi
log "done; binaries in $CACHE"
