#!/usr/bin/env bash
# `make kind-up`: for machines with Docker and the internet. A kind cluster named geodb,
# the images built with Docker and loaded into it, routes from this host to its Service and
# pod networks (the e2e suite connects to ClusterIPs, as it does on the local cluster), and
# geodb installed. Then: make e2e CLUSTER=current KUBECONFIG=$HOME/.kube/geodb-kind
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in docker kind kubectl; do
	command -v "$tool" >/dev/null || { echo "kind-up: $tool is required" >&2; exit 1; }
done
name=geodb
export KUBECONFIG="$HOME/.kube/geodb-kind"
mkdir -p "$(dirname "$KUBECONFIG")"
if ! kind get clusters | grep -qx "$name"; then
	kind create cluster --name "$name" --config e2e/kind/cluster.yaml --kubeconfig "$KUBECONFIG" --wait 120s
fi
kind get kubeconfig --name "$name" >"$KUBECONFIG"

docker build -f images/postgis/Dockerfile -t docker.io/geodb/postgis:17-3.5 .
docker build -f images/operator/Dockerfile -t docker.io/geodb/operator:dev .
kind load docker-image --name "$name" docker.io/geodb/postgis:17-3.5 docker.io/geodb/operator:dev

node_ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$name-control-plane")
for cidr in 10.96.0.0/16 10.244.0.0/16; do
	sudo ip route replace "$cidr" via "$node_ip"
done

CLUSTER=current bash e2e/install.sh
kubectl apply --server-side -n default -f config/samples/geodatabase.yaml
kubectl -n default wait geodb/geo --for=jsonpath='{.status.phase}'=Ready --timeout=600s
kubectl -n default get geodb
echo "export KUBECONFIG=$KUBECONFIG"
