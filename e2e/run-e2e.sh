#!/usr/bin/env bash
# The end-to-end suite: on the local cluster (brought up if needed), or on the current
# KUBECONFIG with CLUSTER=current. A cluster this script started is stopped afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
# kubectl from PATH, or the one e2e/cluster/cluster.sh builds when there is none.
export PATH="$PATH:${GEODB_CACHE:-$HOME/.cache/geodb}/kubectl-v1.34.4"
started_here=0
if [ "${CLUSTER:-local}" != current ]; then
	if ! bash e2e/cluster/cluster.sh status >/dev/null 2>&1; then
		started_here=1
	fi
	bash e2e/cluster/cluster.sh up
	KUBECONFIG="$(bash e2e/cluster/cluster.sh kubeconfig)"
fi
export KUBECONFIG
cleanup() {
	if [ "$started_here" = 1 ] && [ "${KEEP_CLUSTER:-0}" != 1 ]; then
		bash e2e/cluster/cluster.sh down
	fi
}
trap cleanup EXIT
bash e2e/install.sh
time cargo test -p geodb-e2e --features cluster-e2e --test cluster --test recovery --test failover -- --nocapture --test-threads=1
