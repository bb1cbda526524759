#!/usr/bin/env python3
"""Lints the Grafana dashboard config/monitoring/dashboard.json, or prints its queries.

  check-dashboard.py [DASHBOARD]
      Valid JSON; unique panel ids; every panel but rows has at least one target with an
      `expr`; every metric name in every expr (and in the template variables' queries) is
      one of the metric contract below; every $variable an expr uses is a template
      variable or one Grafana provides; exprs on per-cluster metrics select $cluster.
  check-dashboard.py --print-queries [--titled] [--var NAME=VALUE ...] [DASHBOARD]
      Every panel's queries, one per line, variables substituted: $namespace and $cluster
      from --var (required), $__rate_interval and $__interval 1m, $__range 1h unless given.
      --titled prefixes each line with "<panel id>\t<panel title>\t".

Exits 1 with the problems on stderr. Python 3 standard library only.
"""

import argparse
import json
import os
import re
import sys

# The metric contract: what the agent, the pooler and the operator serve. Counters are
# listed with `_total`; histograms by their base name (their _bucket, _sum and _count).
CONTRACT = {
    # Agent, per instance pod (job geodb-instance).
    "geodb_pg_up": "gauge",
    "geodb_pg_is_primary": "gauge",
    "geodb_pg_replication_lag_bytes": "gauge",
    "geodb_pg_replication_lag_seconds": "gauge",
    "geodb_pg_standby_lag_bytes": "gauge",
    "geodb_pg_connections": "gauge",
    "geodb_pg_max_connections": "gauge",
    "geodb_pg_database_size_bytes": "gauge",
    "geodb_pg_data_volume_size_bytes": "gauge",
    "geodb_pg_data_volume_used_bytes": "gauge",
    "geodb_pg_data_volume_used_ratio": "gauge",
    "geodb_pg_xact_commits_total": "counter",
    "geodb_pg_xact_rollbacks_total": "counter",
    "geodb_pg_deadlocks_total": "counter",
    "geodb_pg_temp_bytes_total": "counter",
    "geodb_pg_wal_archived_total": "counter",
    "geodb_pg_wal_archive_failures_total": "counter",
    "geodb_pg_wal_archive_last_success_age_seconds": "gauge",
    "geodb_pg_slow_query_threshold_seconds": "gauge",
    "geodb_pg_slow_statements": "gauge",
    "geodb_pg_slow_statement_mean_seconds": "gauge",
    "geodb_pg_slow_statement_calls_total": "counter",
    "geodb_pg_scrape_duration_seconds": "gauge",
    "geodb_pg_scrape_errors_total": "counter",
    # Pooler pods (job geodb-pooler).
    "pgbouncer_up": "gauge",
    "pgbouncer_pool_client_connections": "gauge",
    "pgbouncer_pool_server_connections": "gauge",
    "pgbouncer_pool_max_wait_seconds": "gauge",
    "pgbouncer_transactions_total": "counter",
    "pgbouncer_queries_total": "counter",
    "pgbouncer_received_bytes_total": "counter",
    "pgbouncer_sent_bytes_total": "counter",
    "pgbouncer_transaction_seconds_total": "counter",
    "pgbouncer_query_seconds_total": "counter",
    "pgbouncer_client_wait_seconds_total": "counter",
    "pgbouncer_list_items": "gauge",
    # Operator pods (job geodb-operator).
    "geodb_instance_up": "gauge",
    "geodb_instance_is_primary": "gauge",
    "geodb_replica_lag_bytes": "gauge",
    "geodb_replica_lag_seconds": "gauge",
    "geodb_backups": "gauge",
    "geodb_backup_last_completion_timestamp_seconds": "gauge",
    "geodb_backup_stored_bytes": "gauge",
    "geodb_wal_archive_failures": "gauge",
    "geodb_wal_archive_last_success_age_seconds": "gauge",
    "geodb_primary_transitions_total": "counter",
    "geodb_primary_transition_duration_seconds": "histogram",
    "geodb_reconciliations_total": "counter",
    "geodb_reconcile_errors_total": "counter",
    "geodb_reconcile_duration_seconds": "histogram",
    "geodb_actions_total": "counter",
}
# The operator's own work is not per GeoDatabase: these carry no namespace/cluster.
NOT_PER_CLUSTER = {
    "geodb_reconciliations_total", "geodb_reconcile_errors_total", "geodb_actions_total",
    "geodb_reconcile_duration_seconds", "geodb_primary_transition_duration_seconds",
}


def series_names():
    """Metric name as queried -> contract name."""
    names = {}
    for name, kind in CONTRACT.items():
        names[name] = name
        if kind == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                names[name + suffix] = name
    return names


# Grafana's own variables and the values --print-queries gives them unless told.
BUILTIN = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h", "__interval_ms": "60000",
           "__range_s": "3600", "__range_ms": "3600000"}
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
            "bool", "offset", "inf", "nan", "atan2"}
VAR = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)\]\]")


def substitute(expr, values):
    """expr with every variable replaced; raises KeyError naming an unknown one."""
    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in values:
            raise KeyError(name)
        return values[name]
    return VAR.sub(repl, expr)


def metric_names(expr):
    """The metric names a PromQL expression selects (variables already substituted)."""
    s = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)  # strings
    s = re.sub(r"\[[^\]]*\]", "", s)  # range and subquery durations
    s = re.sub(r"\{[^}]*\}", "", s)  # label matchers
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.:])[A-Za-z_:][\w:]*", s):
        rest = s[m.end():].lstrip()
        word = m.group(0)
        if rest.startswith("(") or word.lower() in KEYWORDS:
            continue  # a function, an aggregation or a keyword
        names.add(word)
    # A name given only as __name__="..." inside braces.
    names.update(re.findall(r'__name__\s*=\s*"([^"]+)"', expr))
    return names


def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))


def lint(dashboard):
    problems = []
    known = series_names()
    variables = {v.get("name") for v in dashboard.get("templating", {}).get("list", [])}
    lint_values = {name: "x" for name in variables} | BUILTIN
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", q)
        if not m:
            problems.append(f"variable {v.get('name')}: query {q!r} is not label_values(<selector>, <label>)")
            continue
        for name in metric_names(substitute(m.group(1), lint_values)) - known.keys():
            problems.append(f"variable {v.get('name')}: metric {name} is not in the contract")
    ids = {}
    panels = list(walk(dashboard.get("panels", [])))
    if not panels:
        problems.append("no panels")
    for p in panels:
        pid, title = p.get("id"), p.get("title", "")
        where = f"panel {pid} {title!r}"
        if not isinstance(pid, int):
            problems.append(f"{where}: id is not an integer")
        elif pid in ids:
            problems.append(f"{where}: id {pid} also used by {ids[pid]!r}")
        else:
            ids[pid] = title
        if p.get("type") == "row":
            continue
        exprs = [t.get("expr") for t in p.get("targets", []) if t.get("expr")]
        if not exprs:
            problems.append(f"{where}: no target with an expr")
        for expr in exprs:
            try:
                names = metric_names(substitute(expr, lint_values))
            except KeyError as e:
                problems.append(f"{where}: unknown variable ${e.args[0]} in {expr!r}")
                continue
            if not names:
                problems.append(f"{where}: no metric in {expr!r}")
            for name in sorted(names - known.keys()):
                problems.append(f"{where}: metric {name} is not in the contract ({expr!r})")
            per_cluster = {known[n] for n in names & known.keys()} - NOT_PER_CLUSTER
            if per_cluster and "$cluster" not in expr:
                problems.append(f"{where}: {sorted(per_cluster)[0]} without cluster=\"$cluster\" ({expr!r})")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dashboard", nargs="?",
                        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "dashboard.json"))
    parser.add_argument("--print-queries", action="store_true")
    parser.add_argument("--titled", action="store_true")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    try:
        with open(args.dashboard, encoding="utf-8") as f:
            dashboard = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"check-dashboard: {args.dashboard}: {e}")
    problems = lint(dashboard)
    for p in problems:
        print(f"check-dashboard: {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    if not args.print_queries:
        count = sum(1 for p in walk(dashboard["panels"]) if p.get("type") != "row")
        print(f"check-dashboard: {args.dashboard}: {count} panels ok", file=sys.stderr)
        return
    values = dict(BUILTIN)
    for item in args.var:
        name, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"check-dashboard: --var {item!r}: want NAME=VALUE")
        values[name.lstrip("$")] = value
    for p in walk(dashboard["panels"]):
        for t in p.get("targets", []):
            if not t.get("expr"):
                continue
            try:
                query = " ".join(substitute(t["expr"], values).split())
            except KeyError as e:
                sys.exit(f"check-dashboard: give --var {e.args[0]}=VALUE")
            print(f"{p['id']}\t{p.get('title', '')}\t{query}" if args.titled else query)


if __name__ == "__main__":
    main()
