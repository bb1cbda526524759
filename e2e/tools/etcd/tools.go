//go:build tools

// Package tools pins the etcd server that the test harness runs.
// build-tools.sh builds it with `go build go.etcd.io/etcd/server/v3`.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
