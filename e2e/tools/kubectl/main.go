// Command kubectl is kubectl built from the pinned k8s.io/kubectl module, for
// machines that have no kubectl (e2e/cluster/cluster.sh uses /usr/bin/kubectl
// when there is one). Same main as k8s.io/kubernetes/cmd/kubectl.
//
// Built by e2e/tools/build-tools.sh (component `kubectl`).
package main

import (
	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"

	// Client auth plugins (exec, oidc), as in upstream kubectl.
	_ "k8s.io/client-go/plugin/pkg/client/auth"
)

func main() {
	command := cmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		util.CheckErr(err)
	}
}
