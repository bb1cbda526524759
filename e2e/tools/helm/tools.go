//go:build tools

// Package tools pins helm, which charts/test-chart.sh uses to lint and render
// charts/geodb. build-tools.sh builds it with `go build helm.sh/helm/v3/cmd/helm`.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
