#!/usr/bin/env bash
# Builds the images, loads them into the local cluster (unless CLUSTER=current), installs the
# CRDs and the operator, and waits until the operator is available. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
# kubectl from PATH, or the one e2e/cluster/cluster.sh builds when there is none.
export PATH="$PATH:${GEODB_CACHE:-$HOME/.cache/geodb}/kubectl-v1.34.4"
: "${KUBECONFIG:?KUBECONFIG must point at the cluster}"
export KUBECONFIG

# On the local cluster the images are built here and imported into its containerd; a
# current cluster (CLUSTER=current, e.g. kind) must already have them (make kind-up loads them).
if [ "${CLUSTER:-local}" != current ]; then
	cargo build -p geodb
	GEODB_BINARY="$PWD/target/debug/geodb" bash images/build.sh
	bash e2e/cluster/cluster.sh load-images
fi

kubectl apply --server-side -f crds/
kubectl wait --for condition=Established crd/geodatabases.geodb.io --timeout=60s
kubectl apply --server-side -f config/manager/namespace.yaml -f config/rbac/ -f config/manager/deployment.yaml
# A new operator binary under the same tag: restart so the pods run it.
kubectl -n geodb-system rollout restart deployment/geodb-operator >/dev/null
kubectl -n geodb-system rollout status deployment/geodb-operator --timeout=300s
