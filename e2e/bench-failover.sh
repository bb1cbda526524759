#!/usr/bin/env bash
# `make bench-failover`: the failover drills, BENCH_RUNS times each (default 5), on the
# local cluster (brought up and geodb installed if needed; CLUSTER=current for the
# KUBECONFIG cluster). Writes target/bench/failover.json.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:${GEODB_CACHE:-$HOME/.cache/geodb}/kubectl-v1.34.4"
if [ "${CLUSTER:-local}" != current ]; then
	bash e2e/cluster/cluster.sh up
	KUBECONFIG="$(bash e2e/cluster/cluster.sh kubeconfig)"
fi
export KUBECONFIG
bash e2e/install.sh
cargo build -p geodb-e2e --bin geodb-bench-failover
./target/debug/geodb-bench-failover
