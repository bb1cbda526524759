#!/usr/bin/env bash
# `make up`: a local single-node cluster (or the current KUBECONFIG with CLUSTER=current),
# geodb installed in it, and config/samples/geodatabase.yaml applied and Ready.
set -euo pipefail
cd "$(dirname "$0")/.."
# kubectl from PATH, or the one e2e/cluster/cluster.sh builds when there is none.
export PATH="$PATH:${GEODB_CACHE:-$HOME/.cache/geodb}/kubectl-v1.34.4"
started=$(date +%s)

if [ "${CLUSTER:-local}" = current ]; then
	: "${KUBECONFIG:?CLUSTER=current needs KUBECONFIG}"
else
	bash e2e/cluster/cluster.sh up
	KUBECONFIG="$(bash e2e/cluster/cluster.sh kubeconfig)"
fi
export KUBECONFIG
bash e2e/install.sh

kubectl apply --server-side -n default -f config/samples/geodatabase.yaml
if ! kubectl -n default wait geodb/geo --for=jsonpath='{.status.phase}'=Ready --timeout=600s; then
	kubectl -n default get geodb,pods -o wide
	kubectl -n default get events --sort-by=.lastTimestamp | tail -20
	exit 1
fi
kubectl -n default get geodb
host=$(kubectl -n default get service geo-rw -o jsonpath='{.spec.clusterIP}')
cat <<MSG

geodb is running; GeoDatabase "geo" is Ready ($(( $(date +%s) - started )) s).
  export KUBECONFIG=$KUBECONFIG
  PGPASSWORD=\$(kubectl -n default get secret geo-app-rw -o jsonpath='{.data.password}' | base64 -d) \\
    psql -h $host -U app app -c 'SELECT postgis_full_version()'
Stop with: make down
MSG
