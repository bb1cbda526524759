#!/usr/bin/env python3
"""Checks on what `helm template charts/geodb` renders, for charts/test-chart.sh.

  check-rendered.py rbac RENDERED CONFIG_ROLE_YAML CONFIG_INSTANCE_ROLE_YAML
      The rendered operator ClusterRole's and leader Role's rules equal those of
      config/rbac/role.yaml (rule by rule, in order), and role.yaml holds nothing
      else that the chart would miss; the rendered instance ClusterRole is the one of
      config/rbac/instance-role.yaml (same name, same rules).
  check-rendered.py defaults RENDERED NAMESPACE
  check-rendered.py full RENDERED NAMESPACE VALUES_YAML
      What the default values, or the values of VALUES_YAML (every value set), must
      produce in release namespace NAMESPACE.
  check-rendered.py namespaced RENDERED NAMESPACE VALUES_YAML CONFIG_ROLE_YAML
      With rbac.scope namespaced: nothing cluster-wide for the operator, and in each of
      watchNamespaces one Role (the ClusterRole's rules of CONFIG_ROLE_YAML without the
      reads of cluster-scoped objects, and only "bind" on the instances' ClusterRole)
      bound to the chart's ServiceAccount.
  check-rendered.py prometheusrule RENDERED NAMESPACE ALERTS_YAML RULES_OUT [VALUES_YAML]
      A rendering made with the PrometheusRule API available: with
      monitoring.prometheusRule.enabled (the default) one PrometheusRule whose groups are
      those of ALERTS_YAML (config/monitoring/alerts.yaml), with the extra labels of
      VALUES_YAML; its spec is written to RULES_OUT for `promtool check rules`. Disabled:
      none.

defaults, full and namespaced also check the dashboard ConfigMap (or its absence when
monitoring.dashboard.enabled is false): its label, and its geodb.json equal to
config/monitoring/dashboard.json.

Each prints what does not hold and exits 1 then. Needs PyYAML (python3-yaml).
"""

import difflib
import json
import os
import sys

try:
    import yaml
except ImportError:
    sys.exit("check-rendered: the python3 module 'yaml' is missing (apt-get install python3-yaml or pip install pyyaml)")

DASHBOARD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "config", "monitoring", "dashboard.json")
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Namespace"}
problems = []


def load(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def one(docs, kind, source):
    found = [d for d in docs if d.get("kind") == kind]
    if len(found) != 1:
        problems.append(f"{source}: expected one {kind}, found {len(found)}")
        return None
    return found[0]


def check(cond, message):
    if not cond:
        problems.append(message)


def rules_diff(want, got, source, kind):
    if want.get("rules") != got.get("rules"):
        diff = difflib.unified_diff(
            yaml.safe_dump(want.get("rules"), sort_keys=True).splitlines(),
            yaml.safe_dump(got.get("rules"), sort_keys=True).splitlines(),
            f"{source} {kind} rules", f"chart {kind} rules", lineterm="")
        problems.append(f"{kind} rules differ (run `make chart-rbac`):\n" + "\n".join(diff))


def rbac(rendered_path, role_path, instance_role_path):
    rendered, config = load(rendered_path), load(role_path)
    instance = one(load(instance_role_path), "ClusterRole", instance_role_path)
    if instance is None:
        return
    instance_name = instance["metadata"]["name"]
    rendered_instance = [d for d in rendered
                         if d.get("kind") == "ClusterRole" and d["metadata"]["name"] == instance_name]
    check(len(rendered_instance) == 1,
          f"helm template: expected one ClusterRole named {instance_name} (the operator binds instances to it by that name)")
    if rendered_instance:
        rules_diff(instance, rendered_instance[0], instance_role_path, f"ClusterRole {instance_name}")
    operator_docs = [d for d in rendered if d not in rendered_instance]
    kinds = sorted(d.get("kind") for d in config)
    check(kinds == ["ClusterRole", "Role"],
          f"{role_path} holds {kinds}; the chart renders the rules of one ClusterRole and one Role only: update charts/geodb")
    for kind in ("ClusterRole", "Role"):
        want, got = one(config, kind, role_path), one(operator_docs, kind, "helm template")
        if want is None or got is None:
            continue
        rules_diff(want, got, role_path, kind)


def deployment_checks(docs, namespace, watched=()):
    """What holds for any values; returns the Deployment's pod spec and container.
    `watched`: namespaces that hold the operator's Roles (namespaced RBAC)."""
    for d in docs:
        in_watched = d["kind"] in ("Role", "RoleBinding") and d["metadata"].get("namespace") in watched
        if d["kind"] not in CLUSTER_SCOPED and not in_watched:
            check(d["metadata"].get("namespace") == namespace,
                  f"{d['kind']}/{d['metadata']['name']}: namespace {d['metadata'].get('namespace')!r}, want the release namespace {namespace!r}")
        labels = d["metadata"].get("labels", {})
        if d["kind"] != "CustomResourceDefinition":
            for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                        "app.kubernetes.io/managed-by", "helm.sh/chart"):
                check(key in labels, f"{d['kind']}/{d['metadata']['name']}: no label {key}")
    dep = one(docs, "Deployment", "helm template")
    svc = one(docs, "Service", "helm template")
    sa = one(docs, "ServiceAccount", "helm template")
    if dep is None or svc is None or sa is None:
        return None, None
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    selector = dep["spec"]["selector"]["matchLabels"]
    check(selector.get("app.kubernetes.io/name") not in (None, "geodb"),
          "the Deployment must not select app.kubernetes.io/name=geodb (the operator's database pods carry it)")
    check(svc["spec"]["selector"] == selector, "the metrics Service does not select the operator pods")
    check(all(dep["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items()),
          "the pod template does not carry the Deployment's selector labels")
    check(pod["serviceAccountName"] == sa["metadata"]["name"], "the pods do not run as the chart's ServiceAccount")
    sec = pod.get("securityContext", {})
    check(sec.get("runAsNonRoot") is True, "pod securityContext.runAsNonRoot is not true")
    check(sec.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod seccompProfile is not RuntimeDefault")
    csec = container.get("securityContext", {})
    check(csec.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem is not true")
    check(csec.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation is not false")
    check(csec.get("capabilities", {}).get("drop") == ["ALL"], "capabilities are not dropped")
    check(container["args"][0] == "operator" and "--leader-elect=true" in container["args"],
          f"args {container['args']}: want `operator ... --leader-elect=true`")
    port = container["ports"][0]["containerPort"]
    check(f"--http-addr=0.0.0.0:{port}" in container["args"], f"--http-addr does not use the container port {port}")
    check(svc["spec"]["ports"][0]["port"] == port, "the metrics Service port is not metrics.port")
    check(container["livenessProbe"]["httpGet"]["path"] == "/healthz", "no /healthz liveness probe")
    check(container["readinessProbe"]["httpGet"]["path"] == "/readyz", "no /readyz readiness probe")
    for b in (d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        check(b["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": namespace}],
              f"{b['kind']} subjects {b['subjects']}: want the chart's ServiceAccount in {namespace}")
    return pod, container


def dashboard_checks(docs, values):
    """The dashboard ConfigMap as `values` (the chart's defaults where unset) asks."""
    dashboard = values.get("monitoring", {}).get("dashboard", {})
    label = dashboard.get("label", {})
    key, value = label.get("key", "grafana_dashboard"), label.get("value", "1")
    maps = [d for d in docs if d["kind"] == "ConfigMap"]
    if not dashboard.get("enabled", True):
        check(not maps, f"monitoring.dashboard.enabled is false, yet ConfigMaps {[m['metadata']['name'] for m in maps]}")
        return
    check(len(maps) == 1, f"want one ConfigMap (the dashboard), found {len(maps)}")
    if not maps:
        return
    cm = maps[0]
    check(cm["metadata"]["labels"].get(key) == value,
          f"ConfigMap {cm['metadata']['name']}: label {key}={cm['metadata']['labels'].get(key)!r}, want {value!r}")
    check(list(cm.get("data", {})) == ["geodb.json"], f"ConfigMap data keys {list(cm.get('data', {}))}: want geodb.json")
    with open(DASHBOARD, encoding="utf-8") as f:
        want = json.load(f)
    try:
        got = json.loads(cm.get("data", {}).get("geodb.json", ""))
    except ValueError as e:
        problems.append(f"ConfigMap geodb.json is not JSON: {e}")
        return
    check(got == want, "ConfigMap geodb.json differs from config/monitoring/dashboard.json (run `make chart-monitoring`)")


def prometheus_rule(path, namespace, alerts_path, out_path, values_path=None):
    values = {}
    if values_path:
        with open(values_path, encoding="utf-8") as f:
            values = yaml.safe_load(f)
    wanted = values.get("monitoring", {}).get("prometheusRule", {})
    docs = load(path)
    rules = [d for d in docs if d.get("kind") == "PrometheusRule"]
    if not wanted.get("enabled", True):
        check(not rules, "monitoring.prometheusRule.enabled is false, yet a PrometheusRule is rendered")
        return
    rule = one(docs, "PrometheusRule", "helm template --api-versions monitoring.coreos.com/v1/PrometheusRule")
    if rule is None:
        return
    check(rule["apiVersion"] == "monitoring.coreos.com/v1", f"PrometheusRule apiVersion {rule['apiVersion']}")
    check(rule["metadata"].get("namespace") == namespace, f"PrometheusRule namespace {rule['metadata'].get('namespace')!r}")
    labels = rule["metadata"].get("labels", {})
    for k, v in dict(wanted.get("labels") or {}, **{"app.kubernetes.io/name": "geodb-operator"}).items():
        check(labels.get(k) == v, f"PrometheusRule label {k}={labels.get(k)!r}, want {v!r}")
    with open(alerts_path, encoding="utf-8") as f:
        want = {"groups": yaml.safe_load(f)["groups"]}
    if rule.get("spec") != want:
        diff = difflib.unified_diff(yaml.safe_dump(want, sort_keys=True).splitlines(),
                                    yaml.safe_dump(rule.get("spec"), sort_keys=True).splitlines(),
                                    alerts_path, "PrometheusRule spec", lineterm="")
        problems.append("PrometheusRule spec differs from the alerts (run `make chart-monitoring`):\n" + "\n".join(diff))
    with open(out_path, "w", encoding="utf-8") as f:
        yaml.safe_dump(rule.get("spec"), f, sort_keys=False)


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def rendered(path, namespace):
    """The rendering's documents, pod spec, container, Deployment and Service, after the
    checks that hold for any values; None when those objects are missing."""
    docs = load(path)
    pod, container = deployment_checks(docs, namespace)
    if pod is None:
        return None
    return docs, pod, container, one(docs, "Deployment", "helm template"), one(docs, "Service", "helm template")


def defaults(path, namespace):
    found = rendered(path, namespace)
    if found is None:
        return
    docs, pod, container, dep, svc = found
    check(dep["spec"]["replicas"] == 2, "replicas: want 2")
    check(container["image"] == "geodb/operator:dev", f"image {container['image']}: want geodb/operator:dev")
    check(container["imagePullPolicy"] == "IfNotPresent", "imagePullPolicy: want IfNotPresent")
    check(container["args"] == ["operator", "--http-addr=0.0.0.0:8080", "--leader-elect=true"],
          f"args {container['args']}: watchNamespace is empty, so no --namespace")
    check(env_of(container).get("RUST_LOG") == "info,kube=warn", "RUST_LOG: want info,kube=warn")
    check(svc["spec"]["ports"][0]["port"] == 8080, "metrics Service port: want 8080")
    check("annotations" not in svc["metadata"], "prometheus annotations are off by default")
    check(not any(k in pod for k in ("nodeSelector", "tolerations", "affinity")),
          "no nodeSelector, tolerations or affinity by default")
    dashboard_checks(docs, {})
    check(not [d for d in docs if d["kind"] == "PrometheusRule"],
          "a PrometheusRule without the monitoring.coreos.com/v1 API")


def full(path, namespace, values_path):
    found = rendered(path, namespace)
    if found is None:
        return
    docs, pod, container, dep, svc = found
    with open(values_path, encoding="utf-8") as f:
        values = yaml.safe_load(f)
    check(dep["spec"]["replicas"] == values["replicaCount"], "replicas is not replicaCount")
    image = values["image"]
    check(container["image"] == f"{image['repository']}:{image['tag']}", f"image {container['image']}")
    check(container["imagePullPolicy"] == image["pullPolicy"], "imagePullPolicy is not image.pullPolicy")
    check(f"--namespace={','.join(values['watchNamespaces'])}" in container["args"], f"args {container['args']}: no --namespace")
    check(f"--allowed-images={','.join(values['imageAllowlist'])}" in container["args"], f"args {container['args']}: no --allowed-images")
    check(env_of(container).get("RUST_LOG") == values["logLevel"], "RUST_LOG is not logLevel")
    check(container.get("resources") == values["resources"], "resources are not .Values.resources")
    for key in ("nodeSelector", "tolerations", "affinity"):
        check(pod.get(key) == values[key], f"pod {key} is not .Values.{key}")
    check(dep["spec"]["template"]["metadata"].get("annotations") == values["podAnnotations"],
          "pod annotations are not podAnnotations")
    port = values["metrics"]["port"]
    check(container["ports"][0]["containerPort"] == port, "containerPort is not metrics.port")
    check(svc["metadata"].get("annotations") == {
        "prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"},
        f"metrics Service annotations {svc['metadata'].get('annotations')}")
    dashboard_checks(docs, values)


def namespaced_rules(rules):
    """What a Role can hold of the ClusterRole's rules (as the chart's geodb.namespacedRules)."""
    out = []
    for rule in rules:
        if "clusterroles" in rule["resources"]:
            out.append(dict(rule, verbs=["bind"]))
        elif not {"customresourcedefinitions", "storageclasses"} & set(rule["resources"]):
            out.append(rule)
    return out


def namespaced(path, namespace, values_path, role_path):
    with open(values_path, encoding="utf-8") as f:
        values = yaml.safe_load(f)
    watched = values["watchNamespaces"]
    docs = load(path)
    pod, container = deployment_checks(docs, namespace, watched)
    if pod is None:
        return
    check(not [d for d in docs if d["kind"] == "ClusterRoleBinding"], "a ClusterRoleBinding in namespaced mode")
    cluster_roles = [d["metadata"]["name"] for d in docs if d["kind"] == "ClusterRole"]
    check(cluster_roles == ["geodb-instance"],
          f"ClusterRoles {cluster_roles}: want only the instances' geodb-instance (bound per namespace, never to the operator)")
    check(f"--namespace={','.join(watched)}" in container["args"], f"args {container['args']}: no --namespace")
    want = namespaced_rules(one(load(role_path), "ClusterRole", role_path)["rules"])
    for ns in watched:
        roles = [d for d in docs if d["kind"] == "Role" and d["metadata"].get("namespace") == ns]
        bindings = [d for d in docs if d["kind"] == "RoleBinding" and d["metadata"].get("namespace") == ns]
        check(len(roles) == 1 and len(bindings) == 1, f"{ns}: want one Role and one RoleBinding, found {len(roles)} and {len(bindings)}")
        if roles:
            rules_diff({"rules": want}, roles[0], f"{role_path} (namespaced)", f"Role in {ns}")
        if roles and bindings:
            check(bindings[0]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                             "name": roles[0]["metadata"]["name"]}, f"{ns}: RoleBinding does not bind the Role")
    for rule in want:
        check(not {"customresourcedefinitions", "storageclasses", "nodes", "namespaces"} & set(rule["resources"]),
              f"a namespaced rule on a cluster-scoped resource: {rule}")
    dashboard_checks(docs, values)


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    command = sys.argv[1]
    if command == "rbac" and len(sys.argv) == 5:
        rbac(sys.argv[2], sys.argv[3], sys.argv[4])
    elif command == "defaults":
        defaults(sys.argv[2], sys.argv[3])
    elif command == "full" and len(sys.argv) == 5:
        full(sys.argv[2], sys.argv[3], sys.argv[4])
    elif command == "namespaced" and len(sys.argv) == 6:
        namespaced(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
    elif command == "prometheusrule" and len(sys.argv) in (6, 7):
        prometheus_rule(*sys.argv[2:])
    else:
        sys.exit(__doc__)
    for p in problems:
        print(f"check-rendered {command}: {p}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
