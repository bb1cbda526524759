# shellcheck shell=bash
# Sourced by cluster.sh and controlplane.sh: etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler (see processes.sh for the
# ASPECT_COMPONENT functions). Their command lines are defined here only: the
# throwaway control plane of controlplane.sh (the Rust harness) runs the same
# ones with other addresses, ports and knobs (lib/config.sh).

# Kubeconfigs of the control plane's clients and the scheduler's configuration.
render_controlplane_configs() {
	kubeconfig "$ADMIN_KUBECONFIG" admin admin
	kubeconfig "$KCFG/kube-controller-manager.kubeconfig" system:kube-controller-manager kube-controller-manager
	kubeconfig "$KCFG/kube-scheduler.kubeconfig" system:kube-scheduler kube-scheduler
	write_if_changed "$STATE/etc/kube-scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $KCFG/kube-scheduler.kubeconfig
leaderElection:
  leaderElect: false
EOF
}

# ---- etcd ---------------------------------------------------------------------
bin_etcd() { echo "$ETCD_BIN"; }
args_etcd() {
	printf '%s\n' --name=geodb "--data-dir=$STATE/etcd" \
		"--listen-client-urls=http://127.0.0.1:$ETCD_CLIENT_PORT" \
		"--advertise-client-urls=http://127.0.0.1:$ETCD_CLIENT_PORT" \
		"--listen-peer-urls=http://127.0.0.1:$ETCD_PEER_PORT" \
		"--initial-advertise-peer-urls=http://127.0.0.1:$ETCD_PEER_PORT" \
		"--initial-cluster=geodb=http://127.0.0.1:$ETCD_PEER_PORT" \
		--initial-cluster-state=new --unsafe-no-fsync=true --log-level=warn \
		--auto-compaction-mode=periodic --auto-compaction-retention=10m
	[ -z "$ETCD_SNAPSHOT_COUNT" ] || echo "--snapshot-count=$ETCD_SNAPSHOT_COUNT"
}
healthy_etcd() { kcurl "http://127.0.0.1:$ETCD_CLIENT_PORT/health" | grep -q '"health":"true"'; }
ports_etcd() { printf 'tcp 127.0.0.1 %s\n' "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT"; }

# ---- kube-apiserver -------------------------------------------------------------
args_kube_apiserver() {
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
		--allow-privileged=true --profiling=false --v=1 \
		"${APISERVER_EXTRA_ARGS[@]}"
}
configs_kube_apiserver() { printf '%s\n' "$PKI/apiserver.crt" "$PKI/ca.crt"; }
healthy_kube_apiserver() { [ "$(curl_admin "$SERVER/readyz" 2>/dev/null)" = ok ]; }
ports_kube_apiserver() { echo "tcp $NODE_IP $API_PORT"; }

# ---- kube-controller-manager ------------------------------------------------------
args_kube_controller_manager() {
	local k="$KCM_KUBECONFIG"
	printf '%s\n' "--kubeconfig=$k" "--authentication-kubeconfig=$k" "--authorization-kubeconfig=$k" \
		--bind-address=127.0.0.1 "--secure-port=$KCM_PORT" "--cert-dir=$PKI/kcm-serving" \
		"--root-ca-file=$PKI/ca.crt" \
		"--cluster-signing-cert-file=$PKI/ca.crt" "--cluster-signing-key-file=$PKI/ca.key" \
		"--service-account-private-key-file=$PKI/sa.key" \
		"--use-service-account-credentials=$KCM_SA_CREDENTIALS" \
		"--service-cluster-ip-range=$SERVICE_CIDR" "--cluster-cidr=$POD_CIDR" --allocate-node-cidrs=false \
		"--controllers=$KCM_CONTROLLERS" \
		--leader-elect=false --profiling=false --v=1 \
		"${KCM_EXTRA_ARGS[@]}"
}
configs_kube_controller_manager() { echo "$KCM_KUBECONFIG"; }
healthy_kube_controller_manager() { [ "$(kcurl -k "https://127.0.0.1:$KCM_PORT/healthz")" = ok ]; }
ports_kube_controller_manager() { echo "tcp 127.0.0.1 $KCM_PORT"; }

# ---- kube-scheduler ---------------------------------------------------------------
args_kube_scheduler() {
	local k="$KCFG/kube-scheduler.kubeconfig"
	printf '%s\n' "--config=$STATE/etc/kube-scheduler.yaml" \
		"--authentication-kubeconfig=$k" "--authorization-kubeconfig=$k" \
		--bind-address=127.0.0.1 "--secure-port=$SCHED_PORT" "--cert-dir=$PKI/scheduler-serving" \
		--profiling=false --v=1
}
configs_kube_scheduler() { printf '%s\n' "$STATE/etc/kube-scheduler.yaml" "$KCFG/kube-scheduler.kubeconfig"; }
healthy_kube_scheduler() { [ "$(kcurl -k "https://127.0.0.1:$SCHED_PORT/healthz")" = ok ]; }
ports_kube_scheduler() { echo "tcp 127.0.0.1 $SCHED_PORT"; }
