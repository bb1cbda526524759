# shellcheck shell=bash
# Sourced by cluster.sh: what makes the node a usable cluster: CoreDNS (a host
# process), the volume provisioner, the objects `up` applies (RBAC, kube-dns,
# StorageClass) and the smoke pod `up` ends with.

render_addon_configs() {
	kubeconfig "$KCFG/coredns.kubeconfig" geodb:coredns coredns

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

# ---- CoreDNS ----------------------------------------------------------------------
bin_coredns() { echo "$COREDNS_BIN"; }
args_coredns() { printf '%s\n' -conf "$STATE/etc/Corefile"; }
configs_coredns() { printf '%s\n' "$STATE/etc/Corefile" "$KCFG/coredns.kubeconfig"; }
healthy_coredns() { [ "$(kcurl "http://127.0.0.1:$DNS_READY_PORT/ready")" = OK ]; }
ports_coredns() {
	printf '%s\n' "udp $NODE_IP 53" "tcp $NODE_IP 53" "tcp 127.0.0.1 $DNS_HEALTH_PORT" "tcp 127.0.0.1 $DNS_READY_PORT"
}

dns_answers() {
	busybox nslookup "kubernetes.default.svc.$CLUSTER_DOMAIN" "$NODE_IP" 2>/dev/null | grep -q "$API_SVC_IP"
}

# ---- provisioner --------------------------------------------------------------------
bin_provisioner() { echo "$PROVISIONER_BIN"; }
args_provisioner() {
	printf '%s\n' "-kubeconfig=$ADMIN_KUBECONFIG" "-base-dir=$VOLUMES" "-name=$PROVISIONER_NAME" \
		"-node-name=$NODE_NAME" -v=1
}
healthy_provisioner() {
	[ -n "$(pid_of provisioner)" ] && since_last_start provisioner | grep -q 'Started provisioner controller'
}

# ---- cluster objects -------------------------------------------------------------------
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
---
# Volumes that really fill up: a tmpfs of the claim's size (small test volumes only).
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: sized
provisioner: $PROVISIONER_NAME
parameters:
  sized: "true"
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
allowVolumeExpansion: true
EOF
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
