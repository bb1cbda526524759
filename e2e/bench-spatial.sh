#!/usr/bin/env bash
# `make bench-spatial`: the sample schema's searches on the local cluster, through the
# pooler and straight at the primary in one run, at 1,000 and at 1,000,000 locations.
# A GeoDatabase with the sample migrations (config/samples/migrations) is created in a
# namespace of its own; `geodb seed` (release build) loads the rows from the node and is
# timed; `geodb bench spatial` checks every plan and measures. Writes
# target/bench/spatial.json (and the runs' own JSON beside it). BENCH_ITERATIONS (500),
# BENCH_LARGE (1000000). CLUSTER=current for the KUBECONFIG cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:${GEODB_CACHE:-$HOME/.cache/geodb}/kubectl-v1.34.4"
command -v psql >/dev/null || {
	echo "bench-spatial: psql missing (apt-get install postgresql-client)" >&2
	exit 1
}
if [ "${CLUSTER:-local}" != current ]; then
	bash e2e/cluster/cluster.sh up
	KUBECONFIG="$(bash e2e/cluster/cluster.sh kubeconfig)"
fi
export KUBECONFIG
bash e2e/install.sh
cargo build --release -p geodb
BIN="$PWD/target/release/geodb"
ITERATIONS="${BENCH_ITERATIONS:-500}"
LARGE="${BENCH_LARGE:-1000000}"
OUT="$PWD/target/bench"
mkdir -p "$OUT"

ns="bench-spatial-$$"
work="$(mktemp -d)"
cleanup() {
	kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT
kubectl create namespace "$ns" >/dev/null
files=()
for f in config/samples/migrations/V*.sql; do files+=(--from-file="$f"); done
kubectl -n "$ns" create configmap schema "${files[@]}" >/dev/null
kubectl -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: geodb.io/v1alpha1
kind: GeoDatabase
metadata:
  name: spatial
spec:
  instances: 1
  storage:
    size: 4Gi
  postgresql:
    parameters:
      shared_buffers: 256MB
      max_wal_size: 2GB
  migrations:
    configMaps: [schema]
YAML
echo "bench-spatial: waiting for the GeoDatabase and its migrations" >&2
kubectl -n "$ns" wait geodatabase/spatial --for=condition=Ready --timeout=600s >/dev/null
kubectl -n "$ns" wait geodatabase/spatial --for=condition=Migrated --timeout=600s >/dev/null

field() { kubectl -n "$ns" get secret "$1" -o "jsonpath={.data.$2}" | base64 -d; }
field spatial-app-rw password >"$work/password"
field spatial-app-rw 'ca\.crt' >"$work/ca.crt"
chmod 0600 "$work/password"
rw_ip="$(kubectl -n "$ns" get service spatial-rw -o jsonpath='{.spec.clusterIP}')"
pooler_ip="$(kubectl -n "$ns" get service spatial-pooler -o jsonpath='{.spec.clusterIP}')"
rw_name="spatial-rw.$ns.svc"
pooler_name="spatial-pooler.$ns.svc"
export PGHOST="$rw_name" PGHOSTADDR="$rw_ip" PGPORT=5432 PGUSER="$(field spatial-app-rw user)"
export GEODB_DATABASE="$(field spatial-app-rw dbname)" GEODB_PASSWORD_FILE="$work/password"
export PGSSLMODE=verify-full PGSSLROOTCERT="$work/ca.crt"
# psql reads the same variables (hostaddr dialled, host verified).
export PGDATABASE="$GEODB_DATABASE" PGPASSWORD="$(cat "$work/password")"

sql() { psql -X -q -v ON_ERROR_STOP=1 -c "$1"; }
seed() {
	sql "TRUNCATE moderation_logs, images, locations RESTART IDENTITY CASCADE"
	"$BIN" seed --count "$1" "${@:3}" | tail -n 1 >"$OUT/spatial-seed-$2.json"
	# One -c each: a multi-statement -c is one transaction, which VACUUM refuses.
	psql -X -q -v ON_ERROR_STOP=1 -c "VACUUM ANALYZE locations" -c "VACUUM ANALYZE images" \
		-c "VACUUM ANALYZE moderation_logs"
}
bench() {
	"$BIN" bench spatial --iterations "$ITERATIONS" --compare-no-index \
		--target "direct=$rw_ip:5432:$rw_name" --target "pooler=$pooler_ip:6432:$pooler_name" \
		--json-out "$OUT/spatial-$1.json"
}
echo "bench-spatial: 1,000 locations" >&2
seed 1000 small
bench small
echo "bench-spatial: $LARGE locations" >&2
seed "$LARGE" large
bench large
# The same load row by row, the indexes in place (what a seed into tables with rows does).
echo "bench-spatial: $LARGE locations again, --no-bulk" >&2
seed "$LARGE" large-rows --no-bulk

python3 - "$OUT" "$LARGE" <<'PY'
import json, sys
out, large = sys.argv[1], int(sys.argv[2])
def load(name):
    with open(f"{out}/{name}.json") as f:
        return json.load(f)
figures, plans = {}, {}
for size, tag in (("small", "1k"), ("large", "1m")):
    run = load(f"spatial-{size}")
    for k, v in run["figures"].items():
        figures[f"at_{tag}_{k}"] = v
    plans[tag] = run.get("plans")
    seeded = load(f"spatial-seed-{size}")
    figures[f"at_{tag}_seed_s"] = seeded["seconds"]
    figures[f"at_{tag}_seed_rows_per_s"] = seeded.get("locations_per_second")
    figures[f"at_{tag}_seed_bulk_count"] = int(bool(seeded.get("bulk")))
rows_path = load("spatial-seed-large-rows")
figures["at_1m_seed_no_bulk_s"] = rows_path["seconds"]
figures["at_1m_seed_no_bulk_over_bulk_ratio"] = round(rows_path["seconds"] / figures["at_1m_seed_s"], 3)
for q in ("radius_1km", "knn10", "bbox", "fulltext", "join_images"):
    d, p = figures.get(f"at_1m_{q}_direct_p99_ms"), figures.get(f"at_1m_{q}_pooler_p99_ms")
    if d and p:
        figures[f"at_1m_{q}_pooler_over_direct_p99_ratio"] = round(p / d, 3)
report = {
    "figures": figures,
    "targets": {
        "at_1m_radius_1km_pooler_p99_ms": {"max": 10},
        "at_1m_knn10_pooler_p99_ms": {"max": 2},
        "at_1m_radius_1km_pooler_over_direct_p99_ratio": {"max": 1.5},
        "at_1m_radius_no_index_ratio": {"min": 100},
        "at_1m_seed_s": {"max": 15},
    },
    "context": {
        "locations": {"1k": 1000, "1m": large},
        "cluster": "1 instance, shared_buffers 256MB, the pooler in transaction mode",
        "client": "geodb bench spatial (release) on the node, TLS verify-full, through each Service's ClusterIP",
        "seed": "geodb seed (release) from the node into the emptied tables: one transaction, the indexes and foreign keys built after the rows (bulk_count 1); no_bulk: the same rows over 2 connections into the indexed tables",
        "plans": plans,
    },
}
with open(f"{out}/spatial.json", "w") as f:
    json.dump(report, f, indent=2)
print(f"{'figure':58} {'value':>12}  target")
for k, v in sorted(figures.items()):
    t = report["targets"].get(k, "")
    print(f"{k:58} {v!s:>12}  {t}")
PY
