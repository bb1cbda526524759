# geodb: `make up` runs it on a local cluster, `make test` runs every test.
SHELL := /bin/bash
CARGO ?= cargo
GEODB_CACHE ?= $(HOME)/.cache/geodb
export GEODB_CACHE

.PHONY: help build crds fmt fmt-check clippy structure-check tools unit-test apiserver-test test up up-apiserver down e2e kind-up bench-reconcile bench-failover bench-backup bench-pooler bench-metrics bench-spatial \
	chart-crds chart-rbac chart-monitoring chart-test monitoring-test

help:
	@echo "make up               run geodb on a local cluster and apply config/samples/geodatabase.yaml"
	@echo "make down             stop it and remove its state"
	@echo "make test             fmt check, clippy, unit tests, API-server tests, chart and monitoring checks, e2e on the local cluster"
	@echo "make e2e              only the end-to-end suite (CLUSTER=current for the KUBECONFIG cluster)"
	@echo "make kind-up          a kind cluster with geodb (needs Docker and the internet)"
	@echo "make bench-reconcile  200 GeoDatabases against a local API server"
	@echo "make bench-failover   every failover drill 5 times on the local cluster"
	@echo "make bench-pooler     pgbench through the pooler, direct and a bare PgBouncer on the local cluster"
	@echo "make bench-metrics    scrape cost under pgbench on the local cluster, operator /metrics with 200 GeoDatabases"
	@echo "make bench-spatial    the sample schema's searches through the pooler and direct, 1k and 1M locations"
	@echo "make bench-backup     WAL push, base backup, restore and RPO against pgBackRest (no cluster)"
	@echo "make crds             regenerate crds/ from the Rust API types"
	@echo "make chart-test       lint, render and validate the Helm chart charts/geodb"
	@echo "make chart-crds       copy crds/ into charts/geodb/crds/"
	@echo "make chart-rbac       copy config/rbac/ rules into charts/geodb/files/"
	@echo "make chart-monitoring copy the dashboard and alerts of config/monitoring/ into charts/geodb/files/"
	@echo "make monitoring-test  promtool checks and tests of the alerts, scrape configs and dashboard"

build:
	$(CARGO) build --workspace

crds: build
	./target/debug/geodb crdgen --out-dir crds
	$(MAKE) chart-crds chart-rbac

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings

# etcd, kube-apiserver, kube-controller-manager, kube-scheduler built from pinned Go
# modules (cached).
tools:
	bash e2e/tools/build-tools.sh

unit-test:
	$(CARGO) test --workspace --lib --bins -p geodb

apiserver-test: tools
	$(CARGO) test --workspace

# Everything: static checks, unit and API-server tests, then the end-to-end suite on the
# local cluster (brought up and torn down here unless it was already up).
test: fmt-check clippy structure-check tools chart-test monitoring-test
	$(CARGO) test --workspace
	bash e2e/run-e2e.sh

# Every source file of the operator reads in one sitting: at most 500 lines before its
# tests (functions are held to 80 lines by clippy's too_many_lines).
structure-check:
	@over=$$(for f in $$(find operator/src -name '*.rs'); do \
		awk -v f="$$f" '/^#\[cfg\(test\)\]/{exit} {n++} END{if (n > 500) print f" ("n" lines)"}' "$$f"; done); \
	if [ -n "$$over" ]; then echo "files over 500 lines:"; echo "$$over"; exit 1; fi

# The Helm chart: its crds/ is a copy of crds/, its RBAC rules come from copies of
# config/rbac/role.yaml and instance-role.yaml; chart-test fails when a copy is stale.
chart-crds:
	rm -f charts/geodb/crds/*.yaml
	cp crds/*.yaml charts/geodb/crds/

chart-rbac:
	cp config/rbac/role.yaml charts/geodb/files/rbac-role.yaml
	cp config/rbac/instance-role.yaml charts/geodb/files/rbac-instance-role.yaml

# The chart's dashboard ConfigMap and PrometheusRule are read from copies of
# config/monitoring/'s; chart-test fails when a copy is stale.
chart-monitoring:
	cp config/monitoring/dashboard.json charts/geodb/files/dashboard.json
	cp config/monitoring/alerts.yaml charts/geodb/files/alerts.yaml

# helm lint, helm template + kubeconform (offline schemas), values.schema.json rejects bad
# values, drift of the CRD, RBAC and monitoring copies, the PrometheusRule checked by
# promtool (helm and kubeconform built by build-tools.sh).
chart-test:
	bash charts/test-chart.sh

# Alerts (promtool check and unit tests), runbook anchors, scrape configs (relabelling run by
# a local Prometheus against fake pods) and the dashboard's queries; offline, needs
# promtool and prometheus (Debian's prometheus package).
monitoring-test:
	bash config/monitoring/test-monitoring.sh

# A local single-node cluster (or CLUSTER=current with KUBECONFIG), geodb installed, the
# sample GeoDatabase applied and Ready.
up:
	bash e2e/up.sh

down:
	bash e2e/dev/down.sh
	bash e2e/cluster/cluster.sh down

# The operator against a local API server only (no kubelet), for quick API work.
up-apiserver: tools build
	bash e2e/dev/up.sh

# For machines with Docker and the internet: a kind cluster with geodb (then
# `make e2e CLUSTER=current KUBECONFIG=$$HOME/.kube/geodb-kind`).
kind-up:
	bash e2e/kind/up.sh

# The end-to-end suite on the local cluster (brought up and torn down if it was not up).
e2e:
	bash e2e/run-e2e.sh

# Every failover drill 5 times on the local cluster (brought up if needed).
bench-failover:
	bash e2e/bench-failover.sh

# geodb's WAL push, base backup and restore against pgBackRest's, and the RPO of the WAL
# archive, on this host (SeaweedFS and PostgreSQL 15, installed if missing).
bench-backup:
	bash e2e/bench-backup.sh

bench-pooler:
	bash e2e/bench-pooler.sh

bench-metrics:
	bash e2e/bench-metrics.sh

bench-spatial:
	bash e2e/bench-spatial.sh

bench-reconcile: tools
	$(CARGO) build --release -p geodb -p geodb-e2e
	./target/release/geodb-bench-reconcile
