# geodb: `make up` runs it on a local cluster, `make test` runs every test.
SHELL := /bin/bash
CARGO ?= cargo
GEODB_CACHE ?= $(HOME)/.cache/geodb
export GEODB_CACHE

.PHONY: help build crds fmt fmt-check clippy tools unit-test apiserver-test test up down bench-reconcile

help:
	@echo "make up               run geodb on a local cluster and apply config/samples/geodatabase.yaml"
	@echo "make down             stop it and remove its state"
	@echo "make test             fmt check, clippy, unit tests, API-server tests"
	@echo "make bench-reconcile  200 GeoDatabases against a local API server"
	@echo "make crds             regenerate crds/ from the Rust API types"

build:
	$(CARGO) build --workspace

crds: build
	./target/debug/geodb crdgen --out-dir crds

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings

# etcd, kube-apiserver, kube-controller-manager built from pinned Go modules (cached).
tools:
	bash e2e/tools/build-tools.sh

unit-test:
	$(CARGO) test --workspace --lib --bins -p geodb

apiserver-test: tools
	$(CARGO) test --workspace

test: fmt-check clippy tools
	$(CARGO) test --workspace

up: tools build
	bash e2e/dev/up.sh

down:
	bash e2e/dev/down.sh

bench-reconcile: tools
	$(CARGO) build --release -p geodb -p geodb-e2e
	./target/release/geodb-bench-reconcile
