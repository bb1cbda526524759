#!/usr/bin/env bash
# A real single-node Kubernetes cluster running as host processes, for
# geodb's e2e tests.
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
# The commands are here; everything else is in lib/, one file per concern
# (see README.md).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
for lib in config helpers prereqs images pki processes controlplane node network addons s3 teardown; do
	# shellcheck source=/dev/null
	source "$SCRIPT_DIR/lib/$lib.sh"
done

render_configs() {
	detect_oom_adj
	mkdir -p "$LOGS" "$RUN" "$KCFG" "$KUBELET_ROOT" "$POD_LOGS" "$VOLUMES" "$CNI_CONF_DIR" "$CNI_IPAM_DIR" \
		"$CTRD_ROOT" "$STATE/etc" "$CTRD_RUN"
	render_controlplane_configs
	render_node_configs
	render_network_configs
	render_addon_configs
	render_s3_config
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
	phase "binaries (build-tools.sh, weed)"
	ensure_binaries
	ensure_weed
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
		publish_s3_secret
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
	phase "controllers, kubelet, kube-proxy, CoreDNS, provisioner, S3"
	for c in kube-controller-manager kube-scheduler kubelet kube-proxy coredns provisioner s3; do
		ensure_proc "$c"
	done
	for c in kube-controller-manager kube-scheduler kubelet kube-proxy coredns provisioner s3; do
		await_proc "$c" 120
	done
	publish_s3_secret
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
