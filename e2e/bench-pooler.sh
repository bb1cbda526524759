#!/usr/bin/env bash
# `make bench-pooler`: pgbench through the operator's pooler, straight at the primary and
# through a bare PgBouncer beside it, on the local cluster (brought up and geodb
# installed if needed; CLUSTER=current for the KUBECONFIG cluster). BENCH_SECONDS per
# pgbench run (default 15), BENCH_SWITCHOVERS switchovers (default 3), BENCH_ONLY=switchover
# for those alone. Writes target/bench/pooler.json.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:${GEODB_CACHE:-$HOME/.cache/geodb}/kubectl-v1.34.4"
for tool in pgbench pgbouncer openssl setpriv; do
	command -v "$tool" >/dev/null || {
		echo "bench-pooler: $tool missing (apt-get install postgresql-client pgbouncer openssl util-linux)" >&2
		exit 1
	}
done
if [ "${CLUSTER:-local}" != current ]; then
	bash e2e/cluster/cluster.sh up
	KUBECONFIG="$(bash e2e/cluster/cluster.sh kubeconfig)"
fi
export KUBECONFIG
bash e2e/install.sh
cargo build -p geodb-e2e --bin geodb-bench-pooler
# 2,000 pgbench clients need as many descriptors.
ulimit -n 16384
./target/debug/geodb-bench-pooler
