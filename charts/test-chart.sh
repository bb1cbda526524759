#!/usr/bin/env bash
# Tests the Helm chart charts/geodb (`make chart-test`, part of `make test`):
#
#   1. crds/ and charts/geodb/crds/ are identical (`make chart-crds` copies them);
#   2. `helm lint --strict`;
#   3. `helm template` with the default values, with charts/tests/values-full.yaml
#      (every value changed) and with charts/tests/values-namespaced.yaml (namespaced RBAC), each validated by kubeconform -strict against the
#      Kubernetes schemas (offline, see below) and checked by charts/check-rendered.py;
#   4. the rendered ClusterRoles and leader Role rules equal those of config/rbac/role.yaml
#      and instance-role.yaml (the chart renders them from files/rbac-role.yaml and
#      files/rbac-instance-role.yaml, copied by `make chart-rbac`);
#   5. every file in charts/tests/bad/ is rejected by values.schema.json: `helm template`
#      fails and its error names the field given on the file's `# expect:` line;
#   6. files/dashboard.json and files/alerts.yaml are copies of config/monitoring/'s (`make
#      chart-monitoring`); the dashboard ConfigMap is checked in step 3. The PrometheusRule
#      is rendered only where its CRD is served, so the renderings are made once more with
#      `--api-versions monitoring.coreos.com/v1/PrometheusRule`: kubeconform has no schema
#      for it (it validates the rest, skipping that kind), check-rendered.py compares its
#      groups with config/monitoring/alerts.yaml and promtool checks its spec.
#
# helm and kubeconform are built from pinned Go modules by e2e/tools/build-tools.sh into
# ${GEODB_CACHE:-$HOME/.cache/geodb} when missing or stale.
#
# Schemas: kubeconform downloads per-kind JSON schemas from the internet by default. Here
# they are made offline by charts/kubeconform-schemas.py from the OpenAPI v2 document
# api/openapi-spec/swagger.json of the k8s.io/kubernetes module that e2e/tools/k8s pins
# (the Kubernetes version the local cluster runs), taken from the Go module cache (`go mod
# download`, which fetches it from the Go module proxy when the cache lacks it). They are
# cached in $GEODB_CACHE/kubeconform-schemas-<version>, keyed by a stamp of swagger.json and
# the converter, and passed as
#   -schema-location '<dir>/{{ .ResourceKind }}{{ .KindSuffix }}.json'
# i.e. files named <kind>-<first label of the group>-<version>.json, lower case
# (deployment-apps-v1.json, service-v1.json, clusterrole-rbac-v1.json).
#
# Idempotent; runs every check, prints each failure and exits 1 if any failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$ROOT/charts/geodb"
TESTS="$ROOT/charts/tests"
CACHE="${GEODB_CACHE:-$HOME/.cache/geodb}"
export GEODB_CACHE="$CACHE"

log() { echo "chart-test: $*" >&2; }
die() { echo "chart-test: ERROR: $*" >&2; exit 1; }
failures=()
passes=0
fail() {
	failures+=("$1")
	echo "chart-test: FAIL: $1" >&2
}
pass() {
	passes=$((passes + 1))
	echo "chart-test: ok: $1" >&2
}

# The tool versions are those build-tools.sh pins.
tool_version() { sed -n "s/^$1=//p" "$ROOT/e2e/tools/build-tools.sh" | head -n1; }
HELM_VERSION="$(tool_version HELM_VERSION)"
KUBECONFORM_VERSION="$(tool_version KUBECONFORM_VERSION)"
if [ -z "$HELM_VERSION" ] || [ -z "$KUBECONFORM_VERSION" ]; then
	die "no HELM_VERSION/KUBECONFORM_VERSION in e2e/tools/build-tools.sh"
fi
HELM="$CACHE/helm-$HELM_VERSION/helm"
KUBECONFORM="$CACHE/kubeconform-$KUBECONFORM_VERSION/kubeconform"

command -v python3 >/dev/null 2>&1 || die "python3 is needed"
command -v promtool >/dev/null 2>&1 || die "promtool is needed (apt-get install prometheus)"
python3 -c 'import yaml' 2>/dev/null ||
	die "the python3 module 'yaml' is needed (apt-get install python3-yaml or pip install pyyaml)"

# ---- tools (build-tools.sh does nothing when they are up to date) ----------------
bash "$ROOT/e2e/tools/build-tools.sh" helm kubeconform
[ -x "$HELM" ] || die "$HELM was not built"
[ -x "$KUBECONFORM" ] || die "$KUBECONFORM was not built"

# ---- kubeconform schemas, made offline ----------------------------------------------
k8s_json="$(cd "$ROOT/e2e/tools/k8s" && go mod download -json k8s.io/kubernetes)" ||
	die "go mod download k8s.io/kubernetes (in e2e/tools/k8s) failed"
read -r K8S_VERSION K8S_DIR < <(python3 -c 'import json,sys; m=json.load(sys.stdin); print(m["Version"], m["Dir"])' <<<"$k8s_json")
SWAGGER="$K8S_DIR/api/openapi-spec/swagger.json"
[ -f "$SWAGGER" ] || die "no $SWAGGER"
SCHEMAS="$CACHE/kubeconform-schemas-$K8S_VERSION"
schema_stamp="$(cat "$SWAGGER" "$ROOT/charts/kubeconform-schemas.py" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$SCHEMAS/.stamp" 2>/dev/null || true)" != "$schema_stamp" ]; then
	log "making kubeconform schemas for Kubernetes $K8S_VERSION in $SCHEMAS"
	tmp="$(mktemp -d "$CACHE/.kubeconform-schemas.XXXXXX")"
	if ! python3 "$ROOT/charts/kubeconform-schemas.py" "$SWAGGER" "$tmp"; then
		rm -rf "$tmp"
		die "charts/kubeconform-schemas.py failed"
	fi
	echo "$schema_stamp" >"$tmp/.stamp"
	rm -rf "$SCHEMAS"
	mv "$tmp" "$SCHEMAS"
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

kubeconform() {
	"$KUBECONFORM" -strict -summary -schema-location "$SCHEMAS/{{ .ResourceKind }}{{ .KindSuffix }}.json" "$@"
}

# ---- 1. CRD copy ----------------------------------------------------------------------
if diff -r "$ROOT/crds" "$CHART/crds" >"$WORK/crds.diff"; then
	pass "charts/geodb/crds is a copy of crds/"
else
	cat "$WORK/crds.diff" >&2
	fail "charts/geodb/crds differs from crds/ (run \`make chart-crds\`)"
fi

# ---- 2. lint --------------------------------------------------------------------------
if "$HELM" lint --strict "$CHART"; then
	pass "helm lint --strict"
else
	fail "helm lint --strict charts/geodb"
fi
if "$HELM" lint --strict "$CHART" -f "$TESTS/values-full.yaml" >"$WORK/lint-full.log" 2>&1; then
	pass "helm lint --strict with values-full.yaml"
else
	cat "$WORK/lint-full.log" >&2
	fail "helm lint --strict charts/geodb -f charts/tests/values-full.yaml"
fi

# ---- 3. render, validate, check -------------------------------------------------------
# render NAME RELEASE NAMESPACE [HELM ARGS...]: helm template into $WORK/NAME.yaml (with
# the CRDs, so that the CRD is validated too), then kubeconform.
render() {
	local name="$1" release="$2" namespace="$3"
	shift 3
	if ! "$HELM" template "$release" "$CHART" --namespace "$namespace" --include-crds "$@" >"$WORK/$name.yaml"; then
		fail "helm template ($name values)"
		return 1
	fi
	if kubeconform "$WORK/$name.yaml"; then
		pass "kubeconform -strict ($name values)"
	else
		fail "kubeconform -strict on the $name rendering"
	fi
}
if render defaults geodb geodb-system; then
	if python3 "$ROOT/charts/check-rendered.py" defaults "$WORK/defaults.yaml" geodb-system; then
		pass "rendered defaults"
	else
		fail "rendered defaults (charts/check-rendered.py defaults)"
	fi
	# ---- 4. RBAC rules are config/rbac/'s ----
	if python3 "$ROOT/charts/check-rendered.py" rbac "$WORK/defaults.yaml" "$ROOT/config/rbac/role.yaml" "$ROOT/config/rbac/instance-role.yaml"; then
		pass "ClusterRoles and leader Role rules equal config/rbac/'s"
	else
		fail "chart RBAC rules differ from config/rbac/"
	fi
	# The schemas must be strict, or the validation above proves little: an unknown field
	# in the Deployment's pod spec has to be rejected.
	sed 's/^      serviceAccountName: /      serviceAccount_Name: /' "$WORK/defaults.yaml" >"$WORK/unknown-field.yaml"
	if cmp -s "$WORK/defaults.yaml" "$WORK/unknown-field.yaml"; then
		fail "self-test: could not plant an unknown field in the rendered Deployment"
	elif kubeconform "$WORK/unknown-field.yaml" >"$WORK/unknown-field.log" 2>&1; then
		cat "$WORK/unknown-field.log" >&2
		fail "self-test: kubeconform accepted an unknown field in a pod spec (schemas not strict)"
	else
		pass "kubeconform rejects an unknown field"
	fi
fi
if render full prod databases -f "$TESTS/values-full.yaml"; then
	if python3 "$ROOT/charts/check-rendered.py" full "$WORK/full.yaml" databases "$TESTS/values-full.yaml"; then
		pass "rendered values-full.yaml"
	else
		fail "rendered values-full.yaml (charts/check-rendered.py full)"
	fi
fi
if render namespaced prod databases -f "$TESTS/values-namespaced.yaml"; then
	if python3 "$ROOT/charts/check-rendered.py" namespaced "$WORK/namespaced.yaml" databases "$TESTS/values-namespaced.yaml" "$ROOT/config/rbac/role.yaml"; then
		pass "rendered values-namespaced.yaml"
	else
		fail "rendered values-namespaced.yaml (charts/check-rendered.py namespaced)"
	fi
fi

# ---- 5. bad values are rejected by values.schema.json ---------------------------------
bad_count=0
for f in "$TESTS"/bad/*.yaml; do
	bad_count=$((bad_count + 1))
	name="bad/${f##*/}"
	expect="$(sed -n 's/^# expect: //p' "$f" | head -n1)"
	if [ -z "$expect" ]; then
		fail "$name has no '# expect: <field>' line"
		continue
	fi
	if "$HELM" template geodb "$CHART" -f "$f" >/dev/null 2>"$WORK/bad.log"; then
		fail "$name: helm template accepted it"
	elif ! grep -q "values don't meet the specifications of the schema" "$WORK/bad.log"; then
		cat "$WORK/bad.log" >&2
		fail "$name: helm template failed, but not on values.schema.json"
	elif ! grep -qF -- "$expect" "$WORK/bad.log"; then
		cat "$WORK/bad.log" >&2
		fail "$name: the error does not name $expect"
	else
		pass "$name rejected: $(grep -F -- "$expect" "$WORK/bad.log" | head -n1 | sed 's/^- //')"
	fi
done
[ "$bad_count" -ge 3 ] || fail "charts/tests/bad/ holds $bad_count files; want at least 3"

# ---- 6. monitoring: the copies, and the PrometheusRule --------------------------------
for f in dashboard.json alerts.yaml; do
	if cmp -s "$ROOT/config/monitoring/$f" "$CHART/files/$f"; then
		pass "charts/geodb/files/$f is a copy of config/monitoring/$f"
	else
		fail "charts/geodb/files/$f differs from config/monitoring/$f (run \`make chart-monitoring\`)"
	fi
done
PROMETHEUS_RULE_API=monitoring.coreos.com/v1/PrometheusRule
# NAME RELEASE NAMESPACE [VALUES]: the rendering with that API available.
render_with_rule_api() {
	local name="$1" release="$2" namespace="$3" out="$WORK/rule-$1" values=()
	[ -z "${4:-}" ] || values=(-f "$4")
	if ! "$HELM" template "$release" "$CHART" --namespace "$namespace" --api-versions "$PROMETHEUS_RULE_API" \
		"${values[@]}" >"$out.yaml"; then
		fail "helm template --api-versions $PROMETHEUS_RULE_API ($name values)"
		return
	fi
	if kubeconform -skip PrometheusRule "$out.yaml"; then
		pass "kubeconform -strict, PrometheusRule skipped ($name values, PrometheusRule API)"
	else
		fail "kubeconform -strict on the $name rendering with the PrometheusRule API"
	fi
	if ! python3 "$ROOT/charts/check-rendered.py" prometheusrule "$out.yaml" "$namespace" \
		"$ROOT/config/monitoring/alerts.yaml" "$out.rules.yaml" ${4:+"$4"}; then
		fail "PrometheusRule ($name values; charts/check-rendered.py prometheusrule)"
	elif [ ! -e "$out.rules.yaml" ]; then
		pass "no PrometheusRule with monitoring.prometheusRule.enabled false ($name values)"
	elif promtool check rules "$out.rules.yaml" >"$out.promtool.log" 2>&1; then
		pass "PrometheusRule ($name values): the alerts of config/monitoring/alerts.yaml, promtool check rules"
	else
		cat "$out.promtool.log" >&2
		fail "promtool check rules on the PrometheusRule's spec ($name values)"
	fi
}
render_with_rule_api defaults geodb geodb-system
render_with_rule_api full prod databases "$TESTS/values-full.yaml"
render_with_rule_api namespaced prod databases "$TESTS/values-namespaced.yaml"

# ---- result ----------------------------------------------------------------------------
echo "chart-test: $passes passed, ${#failures[@]} failed"
if [ "${#failures[@]}" -gt 0 ]; then
	echo "chart-test: ${#failures[@]} check(s) failed:" >&2
	printf '  - %s\n' "${failures[@]}" >&2
	exit 1
fi
log "all chart checks passed"
