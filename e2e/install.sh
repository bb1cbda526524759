#!/usr/bin/env bash
# Builds the images, loads them into the local cluster (unless CLUSTER=current), installs the
# CRDs and the operator, and waits until the operator is available. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
# kubectl from PATH, or the one e2e/cluster/cluster.sh builds when there is none.
export PATH="$PATH:${GEODB_CACHE:-$HOME/.cache/geodb}/kubectl-v1.34.4"
: "${KUBECONFIG:?KUBECONFIG must point at the cluster}"
export KUBECONFIG

# On the local cluster the images are built here and imported into its containerd; a
# current cluster (CLUSTER=current, e.g. kind) must already have them (make kind-up loads them).
if [ "${CLUSTER:-local}" != current ]; then
	cargo build -p geodb
	GEODB_BINARY="$PWD/target/debug/geodb" bash images/build.sh
	bash e2e/cluster/cluster.sh load-images
fi

# The CRDs first, on every run: Helm installs a chart's crds/ only once, never upgrades them.
kubectl apply --server-side -f crds/
# `kubectl wait` fails at once, instead of waiting, while the new CRD has no conditions.
established() {
	[ "$(kubectl get crd geodatabases.geodb.io \
		-o jsonpath='{.status.conditions[?(@.type=="Established")].status}')" = True ]
}
deadline=$((SECONDS + 60))
until established; do
	if [ "$SECONDS" -ge "$deadline" ]; then
		echo "install: the GeoDatabase CRD is not Established after 60 s" >&2
		kubectl get crd geodatabases.geodb.io -o yaml >&2
		exit 1
	fi
	sleep 0.2
done

kubectl apply --server-side -f config/manager/namespace.yaml

# The operator through the Helm chart (release geodb in geodb-system), so that the chart is
# what the suite runs. GEODB_HELM_ARGS adds values (e.g. --set rbac.scope=namespaced
# --set 'watchNamespaces={default}').
bash e2e/tools/build-tools.sh helm >/dev/null
HELM="${GEODB_CACHE:-$HOME/.cache/geodb}/helm-$(sed -n 's/^HELM_VERSION=//p' e2e/tools/build-tools.sh)/helm"
# An operator installed by an older install.sh (kubectl apply of config/) is not Helm's:
# its objects are handed to the release (Helm adopts objects that carry its labels), but
# for the Deployment, whose selector differs and cannot change: that one is replaced (it
# holds no data; the instance pods keep running meanwhile).
if kubectl -n geodb-system get deployment geodb-operator >/dev/null 2>&1 &&
	[ "$(kubectl -n geodb-system get deployment geodb-operator -o jsonpath='{.metadata.labels.app\.kubernetes\.io/managed-by}')" != Helm ]; then
	kubectl -n geodb-system delete deployment geodb-operator --wait=true
	for object in clusterrole/geodb-operator clusterrole/geodb-instance clusterrolebinding/geodb-operator \
		-n=geodb-system=role/geodb-operator-leader -n=geodb-system=rolebinding/geodb-operator-leader \
		-n=geodb-system=serviceaccount/geodb-operator -n=geodb-system=service/geodb-operator-metrics; do
		ns=()
		case "$object" in -n=*) ns=(-n "$(cut -d= -f2 <<<"$object")") object="${object##*=}" ;; esac
		kubectl "${ns[@]}" get "$object" >/dev/null 2>&1 || continue
		kubectl "${ns[@]}" label --overwrite "$object" app.kubernetes.io/managed-by=Helm >/dev/null
		kubectl "${ns[@]}" annotate --overwrite "$object" meta.helm.sh/release-name=geodb \
			meta.helm.sh/release-namespace=geodb-system >/dev/null
	done
fi
# shellcheck disable=SC2086 # GEODB_HELM_ARGS is a list of arguments
"$HELM" upgrade --install geodb charts/geodb --namespace geodb-system --create-namespace \
	--wait --timeout 300s ${GEODB_HELM_ARGS:-}
# A new operator binary under the same tag: restart so the pods run it.
kubectl -n geodb-system rollout restart deployment/geodb-operator >/dev/null
kubectl -n geodb-system rollout status deployment/geodb-operator --timeout=300s
