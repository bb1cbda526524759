#!/usr/bin/env bash
# Tests config/monitoring/ (`make monitoring-test`, part of `make test`), offline:
#
#   1. `promtool check config` on a minimal prometheus.yml made of prometheus-scrape.yaml
#      and alerts.yaml;
#   2. the scrape config's relabelling, run by a real Prometheus against fake pods: the
#      right pods and ports are kept, with the labels namespace, pod, cluster, instance
#      and job (and the operator's own namespace/cluster/instance kept);
#   3. `promtool check rules alerts.yaml` and `promtool test rules alerts.test.yaml`;
#   4. every alert has a test case that fires and one that does not, its severity label,
#      summary, description and a runbook_url whose anchor is a heading of
#      docs/runbooks/alerts.md;
#   5. check-dashboard.py lints dashboard.json; every dashboard query parses, and returns
#      data on the healthy cluster of alerts.test.yaml (the series of its first group).
#
# Debian's Prometheus is built without Kubernetes service discovery: where promtool
# rejects kubernetes_sd_configs, steps 1 and 2 put file_sd_configs in its place (the
# targets carry the same __meta_kubernetes_* labels, so the relabelling is the same).
#
# Needs promtool and prometheus (Debian: apt-get install prometheus) and python3 with
# PyYAML. Prints each failure and exits 1 if any failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
MON="$ROOT/config/monitoring"
RUNBOOK="$ROOT/docs/runbooks/alerts.md"

log() { echo "monitoring-test: $*" >&2; }
die() { echo "monitoring-test: ERROR: $*" >&2; exit 1; }
failures=()
passes=0
fail() {
	failures+=("$1")
	echo "monitoring-test: FAIL: $1" >&2
}
pass() {
	passes=$((passes + 1))
	echo "monitoring-test: ok: $1" >&2
}

for tool in promtool prometheus python3; do
	command -v "$tool" >/dev/null 2>&1 ||
		die "$tool is needed (promtool and prometheus: apt-get install prometheus)"
done
python3 -c 'import yaml' 2>/dev/null ||
	die "the python3 module 'yaml' is needed (apt-get install python3-yaml or pip install pyyaml)"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# ---- 1. scrape config ---------------------------------------------------------------
# prometheus.yml for promtool: the scrape configs, the rules file beside it. With
# FILE_SD set, each kubernetes_sd_configs becomes file_sd_configs on that file.
make_config() {
	local out="$1" file_sd="${2:-}" interval="${3:-}"
	python3 - "$MON/prometheus-scrape.yaml" "$out" "$file_sd" "$interval" <<'EOF'
import sys, yaml
src, out, file_sd, interval = sys.argv[1:]
scrape = yaml.safe_load(open(src, encoding="utf-8"))
jobs = scrape["scrape_configs"]
for job in jobs:
    sd = job.get("kubernetes_sd_configs")
    if sd != [{"role": "pod"}]:
        sys.exit(f"{src}: job {job.get('job_name')}: want kubernetes_sd_configs [{{role: pod}}], got {sd}")
    if file_sd:
        del job["kubernetes_sd_configs"]
        job["file_sd_configs"] = [{"files": [file_sd], "refresh_interval": "1s"}]
    if interval:
        job["scrape_interval"] = job["scrape_timeout"] = interval
config = {"global": {"evaluation_interval": "15s"}, "rule_files": ["alerts.yaml"], "scrape_configs": jobs}
yaml.safe_dump(config, open(out, "w", encoding="utf-8"), sort_keys=False)
EOF
}
mkdir -p "$WORK/config"
cp "$MON/alerts.yaml" "$WORK/config/alerts.yaml"
if ! make_config "$WORK/config/prometheus.yml"; then
	fail "prometheus-scrape.yaml: not three pod-discovery jobs"
elif promtool check config "$WORK/config/prometheus.yml" >"$WORK/check-config.log" 2>&1; then
	pass "promtool check config (scrape configs and rules)"
elif grep -q "field kubernetes_sd_configs not found" "$WORK/check-config.log"; then
	log "this promtool has no Kubernetes discovery: checking with file_sd_configs in its place"
	echo '[]' >"$WORK/config/targets.json"
	make_config "$WORK/config/prometheus.yml" targets.json
	if promtool check config "$WORK/config/prometheus.yml" >"$WORK/check-config.log" 2>&1; then
		pass "promtool check config (scrape configs with file_sd_configs, and rules)"
	else
		cat "$WORK/check-config.log" >&2
		fail "promtool check config"
	fi
else
	cat "$WORK/check-config.log" >&2
	fail "promtool check config"
fi

# ---- 2. relabelling, with a real Prometheus -----------------------------------------
# Fake pods as file_sd targets (the labels Kubernetes discovery gives), each port served
# by a small HTTP server with a few series; Prometheus scrapes them every second.
mkdir -p "$WORK/relabel"
cp "$MON/alerts.yaml" "$WORK/relabel/alerts.yaml"
make_config "$WORK/relabel/prometheus.yml" targets.json 1s
if python3 - "$WORK/relabel" <<'EOF'; then
import http.server, json, os, socket, subprocess, sys, threading, time, urllib.parse, urllib.request

workdir = sys.argv[1]

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def serve(body):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = body.encode()
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"127.0.0.1:{server.server_address[1]}"

def pod(address, namespace, name, labels, port, phase="Running"):
    meta = {"__meta_kubernetes_namespace": namespace, "__meta_kubernetes_pod_name": name,
            "__meta_kubernetes_pod_phase": phase, "__meta_kubernetes_pod_container_port_name": port}
    for k, v in labels.items():
        meta["__meta_kubernetes_pod_label_" + "".join(c if c.isalnum() else "_" for c in k)] = v
    return {"targets": [address], "labels": meta}

db = {"app.kubernetes.io/managed-by": "geodb-operator", "app.kubernetes.io/component": "database",
      "geodb.io/cluster": "geo"}
pooler = dict(db, **{"app.kubernetes.io/component": "pooler"})
pooler_ro = dict(db, **{"app.kubernetes.io/component": "pooler-ro"})
operator = {"app.kubernetes.io/name": "geodb-operator"}
agent = serve("geodb_pg_up 1\n")
bouncer = serve("pgbouncer_up 1\n")
op = serve('geodb_instance_up{namespace="shop",cluster="geo",instance="geo-1"} 1\n'
           "geodb_reconciliations_total 5\n")
other = serve("unwanted 1\n")
targets = [
    pod(agent, "shop", "geo-1-0", db, "agent"),
    pod(other, "shop", "geo-1-0", db, "postgres"),
    pod(other, "shop", "geo-backup-1-x7k2p", dict(db, **{"app.kubernetes.io/component": "backup"}), "agent"),
    pod(other, "shop", "geo-2-0", db, "agent", phase="Failed"),
    pod(other, "shop", "other-db-0", {"app.kubernetes.io/component": "database"}, "agent"),
    pod(bouncer, "shop", "geo-pooler-5f7c9-x2k4q", pooler, "metrics"),
    pod(other, "shop", "geo-pooler-5f7c9-x2k4q", pooler, "pgbouncer"),
    pod(other, "shop", "geo-pooler-5f7c9-x2k4q", pooler, "control"),
    pod(bouncer, "shop", "geo-pooler-ro-7d9c4-m4n8b", pooler_ro, "metrics"),
    pod(op, "geodb-system", "geodb-operator-6b8d4-q7wzx", operator, "http"),
]
with open(os.path.join(workdir, "targets.json"), "w") as f:
    json.dump(targets, f)

web = f"127.0.0.1:{free_port()}"
with open(os.path.join(workdir, "prometheus.log"), "w") as logf:
    prom = subprocess.Popen(["prometheus", "--config.file=prometheus.yml", "--storage.tsdb.path=data",
                             f"--web.listen-address={web}"], cwd=workdir, stdout=logf, stderr=logf)

def query(q):
    url = f"http://{web}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    with urllib.request.urlopen(url, timeout=5) as r:
        return [s["metric"] for s in json.load(r)["data"]["result"]]

want = {
    'geodb_pg_up': [{"__name__": "geodb_pg_up", "job": "geodb-instance", "namespace": "shop",
                     "cluster": "geo", "pod": "geo-1-0", "instance": "geo-1-0"}],
    'pgbouncer_up': [{"__name__": "pgbouncer_up", "job": "geodb-pooler", "namespace": "shop", "cluster": "geo",
                      "pod": p, "instance": p} for p in ("geo-pooler-5f7c9-x2k4q", "geo-pooler-ro-7d9c4-m4n8b")],
    'geodb_instance_up': [{"__name__": "geodb_instance_up", "job": "geodb-operator", "namespace": "shop",
                           "cluster": "geo", "instance": "geo-1", "pod": "geodb-operator-6b8d4-q7wzx"}],
    'geodb_reconciliations_total': [{"__name__": "geodb_reconciliations_total", "job": "geodb-operator",
                                     "pod": "geodb-operator-6b8d4-q7wzx", "instance": "geodb-operator-6b8d4-q7wzx"}],
    'up': None,  # checked below: the four kept targets
}
key = lambda m: sorted(m.items())
got = {}
try:
    deadline = time.time() + 40  # discovery sends its first update after 5 s
    while time.time() < deadline:
        time.sleep(1)
        if prom.poll() is not None:
            sys.exit("prometheus exited; see its log above")
        try:
            got = {name: sorted(query(name), key=key) for name in want}
        except OSError:
            continue
        if all(got[n] for n in want) and len(got["up"]) >= 4:
            time.sleep(2)  # a further scrape: anything unwanted would show by now
            got = {name: sorted(query(name), key=key) for name in want}
            break
    problems = []
    for name, series in want.items():
        if series is not None and got.get(name) != sorted(series, key=key):
            problems.append(f"{name}: got {got.get(name)}, want {series}")
    ups = sorted((m["job"], m["pod"]) for m in got.get("up", []))
    want_ups = [("geodb-instance", "geo-1-0"), ("geodb-operator", "geodb-operator-6b8d4-q7wzx"),
                ("geodb-pooler", "geo-pooler-5f7c9-x2k4q"), ("geodb-pooler", "geo-pooler-ro-7d9c4-m4n8b")]
    if ups != want_ups:
        problems.append(f"scraped targets (job, pod): got {ups}, want {want_ups}")
    if query("unwanted"):
        problems.append("a dropped pod or port was scraped")
    for p in problems:
        print(f"relabel: {p}", file=sys.stderr)
    sys.exit(1 if problems else 0)
finally:
    prom.terminate()
    try:
        prom.wait(timeout=10)
    except subprocess.TimeoutExpired:
        prom.kill()
EOF
	pass "relabelling: the agent, pooler and operator ports scraped with the contract's labels, nothing else"
else
	tail -n 20 "$WORK/relabel/prometheus.log" >&2 || true
	fail "relabelling of prometheus-scrape.yaml (run by prometheus against fake pods)"
fi

# ---- 3. rules --------------------------------------------------------------------------
if promtool check rules "$MON/alerts.yaml"; then
	pass "promtool check rules alerts.yaml"
else
	fail "promtool check rules alerts.yaml"
fi
if (cd "$MON" && promtool test rules alerts.test.yaml); then
	pass "promtool test rules alerts.test.yaml"
else
	fail "promtool test rules alerts.test.yaml"
fi

# ---- 4. every alert tested both ways, labelled, annotated, with a runbook -------------
if python3 - "$MON/alerts.yaml" "$MON/alerts.test.yaml" "$RUNBOOK" <<'EOF'; then
import re, sys, yaml
alerts_path, tests_path, runbook_path = sys.argv[1:]
PREFIX = "https://github.com/geodb/geodb/blob/main/docs/runbooks/alerts.md#"
problems = []

def anchors(path):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    seen, out = {}, set()
    in_code = False
    for line in open(path, encoding="utf-8"):
        if line.startswith("```"):
            in_code = not in_code
        m = None if in_code else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            text = re.sub(r"`|\*\*|__", "", m.group(1)).strip().lower()
            slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out

headings = anchors(runbook_path)
rules = [r for g in yaml.safe_load(open(alerts_path))["groups"] for r in g["rules"] if "alert" in r]
names = [r["alert"] for r in rules]
for r in rules:
    name = r["alert"]
    if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
        problems.append(f"{name}: severity label {r.get('labels', {}).get('severity')!r}")
    ann = r.get("annotations", {})
    for key in ("summary", "description", "runbook_url"):
        if not ann.get(key):
            problems.append(f"{name}: no {key} annotation")
    url = ann.get("runbook_url", "")
    if not url.startswith(PREFIX):
        problems.append(f"{name}: runbook_url {url!r} does not start with {PREFIX}")
    elif url[len(PREFIX):] not in headings:
        problems.append(f"{name}: no heading of docs/runbooks/alerts.md has the anchor #{url[len(PREFIX):]}")

firing, quiet = {}, {}
for group in yaml.safe_load(open(tests_path))["tests"]:
    for case in group.get("alert_rule_test", []):
        name = case["alertname"]
        if name not in names:
            problems.append(f"alerts.test.yaml ({group.get('name')}): no alert {name} in alerts.yaml")
        exp = case.get("exp_alerts") or []
        (firing if exp else quiet).setdefault(name, []).append(group.get("name"))
        for alert in exp:
            if not alert.get("exp_annotations", {}).get("summary"):
                problems.append(f"alerts.test.yaml ({group.get('name')}): a firing {name} without its summary checked")
for name in names:
    if name not in firing:
        problems.append(f"{name}: no test case where it fires")
    if name not in quiet:
        problems.append(f"{name}: no test case where it does not fire")
for p in problems:
    print(f"alert-coverage: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
	pass "every alert: severity, summary, description, runbook anchor; tested firing and not firing"
else
	fail "alert annotations, runbook anchors or test coverage"
fi

# ---- 5. dashboard ----------------------------------------------------------------------
if python3 "$MON/check-dashboard.py" "$MON/dashboard.json"; then
	pass "check-dashboard.py: dashboard.json lint"
	# Each query as an alert `absent(<query>)`, tested against the healthy cluster's
	# series: promtool parses every query, and one that returns nothing fires.
	if python3 "$MON/check-dashboard.py" --print-queries --titled --var namespace=shop --var cluster=geo \
		"$MON/dashboard.json" >"$WORK/queries.tsv" &&
		python3 - "$WORK/queries.tsv" "$MON/alerts.test.yaml" "$WORK" <<'EOF'; then
import os, sys, yaml
queries_path, tests_path, work = sys.argv[1:]
rules, cases = [], []
for n, line in enumerate(open(queries_path, encoding="utf-8")):
    panel, title, query = line.rstrip("\n").split("\t")
    name = f"DashboardQuery{n + 1}Empty"
    rules.append({"alert": name, "expr": f"absent({query})",
                  "annotations": {"summary": f"panel {panel} {title!r}: {query}"}})
    cases.append({"eval_time": "60m", "alertname": name, "exp_alerts": []})
healthy = [g for g in yaml.safe_load(open(tests_path))["tests"] if g.get("name") == "healthy idle cluster"]
if len(healthy) != 1:
    sys.exit("alerts.test.yaml: want one test group named 'healthy idle cluster'")
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]},
               open(os.path.join(work, "dashboard-rules.yaml"), "w"), sort_keys=False, width=1 << 16)
yaml.safe_dump({"rule_files": ["dashboard-rules.yaml"], "evaluation_interval": "1m",
                "tests": [{"name": "dashboard on a healthy cluster", "interval": healthy[0]["interval"],
                           "input_series": healthy[0]["input_series"], "alert_rule_test": cases}]},
               open(os.path.join(work, "dashboard-test.yaml"), "w"), sort_keys=False, width=1 << 16)
print(f"{len(rules)} queries", file=sys.stderr)
EOF
		if promtool check rules "$WORK/dashboard-rules.yaml" >"$WORK/dashboard-check.log" 2>&1 &&
			(cd "$WORK" && promtool test rules dashboard-test.yaml >"$WORK/dashboard-test.log" 2>&1); then
			pass "every dashboard query parses and returns data on a healthy cluster"
		else
			cat "$WORK/dashboard-check.log" "$WORK/dashboard-test.log" 2>/dev/null | grep -v '^$' >&2 || true
			fail "dashboard queries (a query that does not parse, or returns nothing on a healthy cluster)"
		fi
	else
		fail "check-dashboard.py --print-queries"
	fi
else
	fail "check-dashboard.py: dashboard.json lint"
fi

# ---- result ----------------------------------------------------------------------------
echo "monitoring-test: $passes passed, ${#failures[@]} failed"
if [ "${#failures[@]}" -gt 0 ]; then
	echo "monitoring-test: ${#failures[@]} check(s) failed:" >&2
	printf '  - %s\n' "${failures[@]}" >&2
	exit 1
fi
log "all monitoring checks passed"
