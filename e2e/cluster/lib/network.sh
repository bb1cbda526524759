# shellcheck shell=bash
# Sourced by cluster.sh: the host network (node address, service route,
# sysctls, the iptables guard), CNI bridge networking and kube-proxy (see
# processes.sh for the ASPECT_COMPONENT functions).

render_network_configs() {
	kubeconfig "$KCFG/kube-proxy.kubeconfig" system:kube-proxy kube-proxy

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
}

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

# ---- kube-proxy -------------------------------------------------------------------
args_kube_proxy() { printf '%s\n' "--config=$STATE/etc/kube-proxy.yaml" --v=1; }
configs_kube_proxy() { printf '%s\n' "$STATE/etc/kube-proxy.yaml" "$KCFG/kube-proxy.kubeconfig"; }
healthy_kube_proxy() { kcurl "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz" >/dev/null; }
ports_kube_proxy() { printf 'tcp 127.0.0.1 %s\n' "$PROXY_HEALTHZ_PORT" "$PROXY_METRICS_PORT"; }
