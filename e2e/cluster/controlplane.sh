#!/usr/bin/env bash
# The control plane of cluster.sh (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler) as a throwaway instance on
# 127.0.0.1, for the Rust harness (e2e/src/controlplane.rs: the API-server
# tests, geodb-localcp, geodb-bench-reconcile; kube-scheduler only when the
# harness asks for it). Same PKI, kubeconfigs and command lines as the
# cluster (lib/pki.sh, lib/controlplane.sh); only the state directory, the
# address, the ports and a few knobs differ. It writes files and prints
# command lines; the caller runs the processes.
#
# Usage: e2e/cluster/controlplane.sh COMMAND ...
#   prepare DIR          create DIR/pki (CA, the control plane's certificates,
#                        the service-account key pair, a client certificate of
#                        the user geodb-operator without groups),
#                        DIR/kubeconfig (admin, group system:masters),
#                        DIR/operator.kubeconfig (geodb-operator) and the
#                        control plane's own kubeconfigs
#   argv COMPONENT DIR   print COMPONENT's program, then each argument, one per
#                        line (etcd, kube-apiserver, kube-controller-manager,
#                        kube-scheduler)
#
# Environment:
#   GEODB_CP_API_PORT, GEODB_CP_ETCD_PORT, GEODB_CP_ETCD_PEER_PORT,
#   GEODB_CP_KCM_PORT, GEODB_CP_SCHED_PORT
#                           the ports on 127.0.0.1 (required)
#   GEODB_CP_APISERVER_ARGS, GEODB_CP_KCM_ARGS
#                           extra kube-apiserver / kube-controller-manager
#                           arguments, one per line (appended: later flags win)
#   GEODB_ETCD_SNAPSHOT_COUNT  etcd's --snapshot-count (as for the cluster)
#   GEODB_CACHE             the binaries (default ~/.cache/geodb);
#   GEODB_ETCD, GEODB_KUBE_APISERVER, GEODB_KUBE_CONTROLLER_MANAGER,
#   GEODB_KUBE_SCHEDULER    override one program's path
# Needs no root and starts nothing.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//'; }

case "${1:-}:$#" in
prepare:2 | argv:3) ;;
-h:* | --help:* | help:*)
	usage
	exit 0
	;;
*)
	usage >&2
	exit 2
	;;
esac
cmd="$1"
dir="${*: -1}"
if [ -z "$dir" ]; then
	usage >&2
	exit 2
fi

# Everything lives under DIR: lib/config.sh derives the paths from it.
GEODB_CLUSTER_DIR="$(realpath -m -- "$dir")"
export GEODB_CLUSTER_DIR
for lib in config helpers pki processes controlplane; do
	# shellcheck source=/dev/null
	source "$SCRIPT_DIR/lib/$lib.sh"
done

# ---- what differs from the cluster ------------------------------------------
# port VAR: the value of the environment variable VAR, a TCP port.
port() {
	local v="${!1:-}"
	if ! [[ "$v" =~ ^[0-9]+$ ]] || [ "$v" -lt 1 ] || [ "$v" -gt 65535 ]; then
		die "$1 must be set to a TCP port (got '$v')"
	fi
	echo "$v"
}
# lines VAR ARRAY: the non-empty lines of the environment variable VAR into ARRAY.
lines() {
	local -n into="$2"
	local l
	into=()
	while IFS= read -r l; do
		[ -z "$l" ] || into+=("$l")
	done <<<"${!1:-}"
}

# Variables of lib/config.sh, read by the functions of lib/.
# shellcheck disable=SC2034
{
	NODE_IP=127.0.0.1
	API_PORT="$(port GEODB_CP_API_PORT)"
	ETCD_CLIENT_PORT="$(port GEODB_CP_ETCD_PORT)"
	ETCD_PEER_PORT="$(port GEODB_CP_ETCD_PEER_PORT)"
	KCM_PORT="$(port GEODB_CP_KCM_PORT)"
	SCHED_PORT="$(port GEODB_CP_SCHED_PORT)"
	SERVER="https://$NODE_IP:$API_PORT"
	# One identity for all controllers: with per-controller service-account
	# credentials (the cluster's) each controller starts ~0.15 s later, and
	# the garbage collector of a fresh control plane acted ~1 s late. Then the
	# controllers need more rights than system:kube-controller-manager has:
	# admin's.
	KCM_SA_CREDENTIALS=false
	KCM_KUBECONFIG="$ADMIN_KUBECONFIG"
	# No kubelet runs: the controllers of nodes, of pods' lifecycle and of
	# volume binding stay off.
	KCM_CONTROLLERS=garbage-collector-controller,namespace-controller,serviceaccount-controller
	KCM_CONTROLLERS+=,serviceaccount-token-controller,root-ca-certificate-publisher-controller
	KCM_CONTROLLERS+=,deployment-controller,replicaset-controller,statefulset-controller
	KCM_CONTROLLERS+=,job-controller,cronjob-controller,disruption-controller
	KCM_CONTROLLERS+=,endpoints-controller,endpointslice-controller
	KCM_CONTROLLERS+=,persistentvolumeclaim-protection-controller,persistentvolume-protection-controller
	lines GEODB_CP_APISERVER_ARGS APISERVER_EXTRA_ARGS
	# The endpoints of the Service `kubernetes` would be 127.0.0.1, which
	# Endpoints refuse (loopback; an error every 10 s); no pod uses them here.
	# (This reconciler logs "Found stale data, removed previous endpoints on
	# kubernetes service" once at start: harmless.)
	APISERVER_EXTRA_ARGS=(--endpoint-reconciler-type=none "${APISERVER_EXTRA_ARGS[@]}")
	lines GEODB_CP_KCM_ARGS KCM_EXTRA_ARGS
	[ -z "${GEODB_ETCD:-}" ] || ETCD_BIN="$GEODB_ETCD"
}
[ -z "${GEODB_KUBE_APISERVER:-}" ] || bin_kube_apiserver() { echo "$GEODB_KUBE_APISERVER"; }
[ -z "${GEODB_KUBE_CONTROLLER_MANAGER:-}" ] || bin_kube_controller_manager() { echo "$GEODB_KUBE_CONTROLLER_MANAGER"; }
[ -z "${GEODB_KUBE_SCHEDULER:-}" ] || bin_kube_scheduler() { echo "$GEODB_KUBE_SCHEDULER"; }

# ---- commands ----------------------------------------------------------------
cmd_prepare() {
	command -v openssl >/dev/null || die "openssl is not installed (apt-get install -y openssl)"
	mkdir -p "$STATE" "$LOGS" "$KCFG" "$STATE/etc"
	ensure_controlplane_pki
	cert "$OPERATOR_USER" "$OPERATOR_USER" "" client ""
	render_controlplane_configs
	kubeconfig "$STATE/operator.kubeconfig" "$OPERATOR_USER" "$OPERATOR_USER"
}

cmd_argv() {
	local name="$1"
	case "$name" in
	etcd | kube-apiserver | kube-controller-manager | kube-scheduler) ;;
	*) die "argv: unknown component '$name' (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)" ;;
	esac
	bin_of "$name"
	args_of "$name"
}

OPERATOR_USER=geodb-operator
case "$cmd" in
prepare) cmd_prepare ;;
argv) cmd_argv "$2" ;;
esac
