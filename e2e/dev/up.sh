#!/usr/bin/env bash
# Local API server (etcd, kube-apiserver, kube-controller-manager) with the operator
# running against it, and the sample GeoDatabase applied. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
STATE="${GEODB_CACHE:-$HOME/.cache/geodb}/dev"
KUBECONFIG="$STATE/kubeconfig"
export KUBECONFIG
mkdir -p "$STATE"
command -v kubectl >/dev/null || { echo "up: kubectl is required (apt-get install kubectl, or any kubectl >= 1.30 on PATH)" >&2; exit 1; }

alive() { [ -f "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

if ! alive localcp; then
	rm -f "$KUBECONFIG"
	nohup ./target/debug/geodb-localcp --kubeconfig "$KUBECONFIG" >"$STATE/localcp.log" 2>&1 &
	echo $! >"$STATE/localcp.pid"
	for _ in $(seq 1 600); do
		[ -s "$KUBECONFIG" ] && kubectl get --raw /readyz >/dev/null 2>&1 && break
		alive localcp || { tail -n 30 "$STATE/localcp.log"; exit 1; }
		sleep 0.1
	done
fi
kubectl apply --server-side -f crds/ -f config/manager/namespace.yaml -f config/rbac/instance-role.yaml >/dev/null
kubectl wait --for condition=Established crd/geodatabases.geodb.io --timeout=60s >/dev/null

if ! alive operator; then
	nohup ./target/debug/geodb operator --http-addr 127.0.0.1:18080 --lease-namespace geodb-system \
		--identity "$(hostname)-dev" >"$STATE/operator.log" 2>&1 &
	echo $! >"$STATE/operator.pid"
fi
kubectl apply --server-side -f config/samples/geodatabase.yaml >/dev/null
for _ in $(seq 1 300); do
	phase=$(kubectl get geodb geo -o jsonpath='{.status.phase}' 2>/dev/null || true)
	[ -n "$phase" ] && break
	sleep 0.1
done
kubectl get geodb
cat <<MSG

The operator is reconciling GeoDatabase "geo" against a local API server
(no kubelet runs here, so pods stay Pending).
  export KUBECONFIG=$KUBECONFIG
  kubectl get geodb,statefulsets,services,secrets
  logs: $STATE/operator.log   metrics: curl -s 127.0.0.1:18080/metrics
Stop with: make down
MSG
