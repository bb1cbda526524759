# shellcheck shell=bash
# Sourced by cluster.sh: the cluster CA, every component's certificate and the kubeconfigs.

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
