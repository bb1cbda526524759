#!/usr/bin/env bash
# `make bench-metrics`: the cost of monitoring. The operator's /metrics with 200
# GeoDatabases against a local API server (`make bench-reconcile`, skipped with
# BENCH_SKIP_OPERATOR=1 when target/bench/reconcile.json is fresh), then an instance's and
# a pooler's /metrics scraped every second while pgbench loads the instance, on the local
# cluster (brought up and geodb installed if needed; CLUSTER=current for the KUBECONFIG
# cluster). BENCH_SECONDS per pgbench run (default 20), BENCH_PAIRS (3). Writes
# target/bench/metrics.json.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:${GEODB_CACHE:-$HOME/.cache/geodb}/kubectl-v1.34.4"
command -v pgbench >/dev/null || {
	echo "bench-metrics: pgbench missing (apt-get install postgresql-client)" >&2
	exit 1
}
if [ "${BENCH_SKIP_OPERATOR:-0}" != 1 ]; then
	make bench-reconcile
fi
if [ "${CLUSTER:-local}" != current ]; then
	bash e2e/cluster/cluster.sh up
	KUBECONFIG="$(bash e2e/cluster/cluster.sh kubeconfig)"
fi
export KUBECONFIG
bash e2e/install.sh
cargo build -p geodb-e2e --bin geodb-bench-metrics
./target/debug/geodb-bench-metrics
