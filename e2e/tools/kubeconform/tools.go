//go:build tools

// Package tools pins kubeconform, which charts/test-chart.sh uses to validate
// the manifests that charts/geodb renders. build-tools.sh builds it with
// `go build github.com/yannh/kubeconform/cmd/kubeconform`.
package tools

import (
	_ "github.com/yannh/kubeconform/cmd/kubeconform"
)
