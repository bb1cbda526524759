# shellcheck shell=bash
# Sourced by cluster.sh: the node, i.e. containerd (our own instance) and the
# kubelet (see processes.sh for the ASPECT_COMPONENT functions).

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

render_node_configs() {
	kubeconfig "$KCFG/kubelet.kubeconfig" "system:node:$NODE_NAME" kubelet

	# containerd: our own instance; nothing shared with a system containerd.
	# Image pulls go to a dead proxy (see env_containerd): images must be
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
}

# ---- containerd ---------------------------------------------------------------
bin_containerd() { command -v containerd || echo /usr/bin/containerd; }
args_containerd() { printf '%s\n' --config "$STATE/etc/containerd.toml"; }
configs_containerd() { echo "$STATE/etc/containerd.toml"; }
healthy_containerd() { containerd_healthy; }
# Any image pull goes to a dead proxy on loopback and fails at once: this
# cluster never fetches anything from the network.
env_containerd() {
	printf '%s\n' HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 http_proxy=http://127.0.0.1:9 \
		https_proxy=http://127.0.0.1:9 NO_PROXY= no_proxy=
}
containerd_healthy() {
	[ -S "$CTRD_SOCK" ] && timeout 5 ctr --address "$CTRD_SOCK" version >/dev/null 2>&1
}

# ---- kubelet --------------------------------------------------------------------
args_kubelet() {
	printf '%s\n' "--config=$STATE/etc/kubelet.yaml" "--kubeconfig=$KCFG/kubelet.kubeconfig" \
		"--root-dir=$KUBELET_ROOT" "--hostname-override=$NODE_NAME" "--node-ip=$NODE_IP" \
		"--oom-score-adj=$OOM_SCORE_ADJ" --v=1
}
configs_kubelet() { printf '%s\n' "$STATE/etc/kubelet.yaml" "$KCFG/kubelet.kubeconfig"; }
healthy_kubelet() { [ "$(kcurl "http://127.0.0.1:$KUBELET_HEALTHZ_PORT/healthz")" = ok ]; }
ports_kubelet() { printf '%s\n' "tcp $NODE_IP $KUBELET_PORT" "tcp 127.0.0.1 $KUBELET_HEALTHZ_PORT"; }

node_ready() {
	[ "$(kc get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
