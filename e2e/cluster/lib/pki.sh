# shellcheck shell=bash
# Sourced by cluster.sh and controlplane.sh: the cluster CA, every component's
# certificate and the kubeconfigs.

# cert NAME CN ORG USAGE SANS: a key and a certificate signed by our CA (one
# openssl run). USAGE: server | client | both. SANS: openssl subjectAltName
# list or "".
cert() {
	local name="$1" cn="$2" org="$3" usage="$4" sans="$5" subj eku san=()
	[ -f "$PKI/$name.crt" ] && [ -f "$PKI/$name.key" ] && return 0
	subj="/CN=$cn"
	[ -z "$org" ] || subj="/O=$org$subj"
	case "$usage" in
	server) eku=serverAuth ;;
	client) eku=clientAuth ;;
	both) eku=serverAuth,clientAuth ;;
	esac
	[ -z "$sans" ] || san=(-addext "subjectAltName=$sans")
	openssl req -x509 -newkey EC -pkeyopt ec_paramgen_curve:P-256 -noenc -keyout "$PKI/$name.key.tmp" \
		-subj "$subj" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -days 3650 -sha256 \
		-addext "basicConstraints=critical,CA:FALSE" \
		-addext "keyUsage=critical,digitalSignature,keyEncipherment" \
		-addext "extendedKeyUsage=$eku" \
		"${san[@]}" \
		-out "$PKI/$name.crt.tmp" 2>/dev/null || die "signing the $name certificate failed"
	chmod 0600 "$PKI/$name.key.tmp"
	mv -f "$PKI/$name.key.tmp" "$PKI/$name.key"
	mv -f "$PKI/$name.crt.tmp" "$PKI/$name.crt"
}

# ensure_controlplane_pki: the CA and what etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and the admin need (the throwaway
# control plane of controlplane.sh makes only these).
ensure_controlplane_pki() {
	local sans sa=""
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
	# The service-account key pair (RSA: the slow one) meanwhile.
	if [ ! -f "$PKI/sa.key" ] || [ ! -f "$PKI/sa.pub" ]; then
		(
			openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$PKI/sa.key.tmp" 2>/dev/null &&
				openssl pkey -in "$PKI/sa.key.tmp" -pubout -out "$PKI/sa.pub" 2>/dev/null &&
				chmod 0600 "$PKI/sa.key.tmp" &&
				mv -f "$PKI/sa.key.tmp" "$PKI/sa.key"
		) &
		sa=$!
	fi
	sans="IP:$API_SVC_IP,IP:$NODE_IP,IP:127.0.0.1"
	[ "$NODE_IP" != 127.0.0.1 ] || sans="IP:$API_SVC_IP,IP:127.0.0.1"
	cert apiserver kube-apiserver "" server \
		"$sans,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN,DNS:localhost"
	# kube-apiserver -> kubelet (logs, exec, port-forward).
	cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters client ""
	cert admin admin system:masters client ""
	cert kube-controller-manager system:kube-controller-manager "" client ""
	cert kube-scheduler system:kube-scheduler "" client ""
	[ -z "$sa" ] || wait "$sa" || die "creating the service-account key pair failed"
}

# ensure_pki: the cluster's: the control plane's, the node's and the add-ons'.
ensure_pki() {
	ensure_controlplane_pki
	cert kubelet "system:node:$NODE_NAME" system:nodes client ""
	cert kubelet-serving "system:node:$NODE_NAME" system:nodes server "IP:$NODE_IP,DNS:$NODE_NAME"
	cert kube-proxy system:kube-proxy "" client ""
	cert coredns geodb:coredns "" client ""
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
