//! Monitoring against a real Prometheus on the node (`geodb_e2e::prometheus`), with the
//! shipped scrape configuration and alerts: every endpoint passes `promtool check
//! metrics`; a custom query of a ConfigMap is served by the primary only; a slow
//! statement shows by query id; the connection gauge follows a burst;
//! replication lag rises while a replica's replay is paused and falls back; the disk
//! alert fires when a (really small) data volume is filled past 80 %; every dashboard
//! query returns data.

use std::time::Duration;

use geodb::api::{GeoDatabase, Phase};
use geodb_e2e::archiving::{ensure_bucket, ClusterStore};
use geodb_e2e::conn::{connect, connection_for};
use geodb_e2e::drill::{pod_ip, primary_of, superuser, superuser_password};
use geodb_e2e::kube_util::{repo_root, wait_for};
use geodb_e2e::prometheus::{http_get, lint_metrics, Prometheus};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};

const NAME: &str = "mon";
const SCRAPED: Duration = Duration::from_secs(60);

/// The value of a query that answers one number, `None` while it answers nothing.
async fn value(prom: &Prometheus, promql: &str) -> Option<f64> {
    prom.query(promql).await.ok()?.first().map(|(_, v)| *v)
}

/// Wait until `promql` answers a number that `ok` accepts; panic with what was seen.
async fn wait_value(prom: &Prometheus, what: &str, promql: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let last = std::sync::Mutex::new(None);
    let seen = wait_for(what, SCRAPED, || async {
        let v = value(prom, promql).await;
        *last.lock().unwrap() = v;
        v.filter(|v| ok(*v))
    })
    .await;
    match seen {
        Ok(v) => v,
        Err(e) => {
            let last = *last.lock().unwrap();
            let targets = prom.targets().await.unwrap_or_default();
            panic!("{e}: {promql} last answered {last:?}; targets: {targets:?}")
        }
    }
}

async fn create(client: &Client, ns: &str) {
    let store = ClusterStore::read(client).await.unwrap();
    store.copy_secret(client, ns, "s3").await.unwrap();
    ensure_bucket(&store.client(), "geodb-e2e").await.unwrap();
    let queries: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "mon-queries"},
        "data": {"queries.yaml": "- name: app_user_tables\n  primaryOnly: true\n  query: SELECT count(*) AS n FROM pg_stat_user_tables\n  metrics:\n    - {column: n, type: gauge, help: Tables of the application database.}\n"}
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &queries)
        .await
        .unwrap();
    let db: GeoDatabase = serde_json::from_value(serde_json::json!({
        "apiVersion": "geodb.io/v1alpha1", "kind": "GeoDatabase",
        "metadata": {"name": NAME, "annotations": {"geodb.io/backup-request": "first"}},
        "spec": {"instances": 2,
            "storage": {"size": "320Mi", "storageClassName": "sized"},
            "postgresql": {"parameters": {"max_wal_size": "64MB", "min_wal_size": "32MB"}},
            "monitoring": {"customQueries": "mon-queries"},
            "backup": {"archiveTimeoutSeconds": 10, "objectStore": {
                "endpoint": store.endpoint, "bucket": "geodb-e2e",
                "credentials": {"secretName": "s3"},
                "ca": {"secretName": "s3", "key": "ca.crt"}}}}
    }))
    .unwrap();
    let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &db).await.unwrap();
    wait_for(
        "mon Ready with a base backup",
        Duration::from_secs(600),
        || async {
            let s = api.get(NAME).await.ok()?.status?;
            let backed_up = s.backups.as_ref().is_some_and(|b| b.count > 0);
            (s.phase == Some(Phase::Ready) && s.ready_instances == 2 && backed_up).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Every `/metrics` of the cluster's pods and of the operator, linted by promtool.
async fn lint_every_endpoint(client: &Client, ns: &str) {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("geodb.io/cluster={NAME}")))
        .await
        .unwrap();
    let operators = Api::<Pod>::namespaced(client.clone(), "geodb-system")
        .list(&ListParams::default().labels("app.kubernetes.io/name=geodb-operator"))
        .await
        .unwrap();
    let mut endpoints = Vec::new();
    for pod in pods.items.iter().chain(&operators.items) {
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        let ports = pod
            .spec
            .as_ref()
            .unwrap()
            .containers
            .iter()
            .flat_map(|c| c.ports.clone().unwrap_or_default());
        for port in ports {
            if matches!(port.name.as_deref(), Some("agent" | "control" | "http")) {
                endpoints.push((pod.name_any(), format!("{ip}:{}", port.container_port)));
            }
        }
    }
    assert!(
        endpoints.len() >= 4,
        "instances, poolers and the operator: {endpoints:?}"
    );
    for (pod, addr) in endpoints {
        let (status, page) = http_get(&addr, "/metrics").await.unwrap();
        assert_eq!(status, 200, "{pod} {addr}/metrics: {page:.300}");
        let problems = lint_metrics(&page).unwrap();
        assert!(
            problems.is_empty(),
            "promtool check metrics on {pod} {addr}: {problems}"
        );
    }
}

pub async fn scenario_monitoring(client: &Client, ns: &str) {
    create(client, ns).await;
    let prom = Prometheus::start(client, &[ns]).await.unwrap();
    let sel = format!("namespace=\"{ns}\",cluster=\"{NAME}\"");
    let up = |job: &str| format!("count(up{{job=\"{job}\",{sel}}} == 1)");
    wait_value(
        &prom,
        "both instances scraped",
        &up("geodb-instance"),
        |v| v >= 2.0,
    )
    .await;
    wait_value(&prom, "the poolers scraped", &up("geodb-pooler"), |v| {
        v >= 1.0
    })
    .await;
    wait_value(
        &prom,
        "the operator scraped",
        "count(up{job=\"geodb-operator\"} == 1)",
        |v| v >= 1.0,
    )
    .await;
    lint_every_endpoint(client, ns).await;

    let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    let primary = primary_of(&api.get(NAME).await.unwrap()).unwrap();
    let replica = if primary.ends_with("-1") {
        format!("{NAME}-2")
    } else {
        format!("{NAME}-1")
    };
    let (primary_pod, replica_pod) = (format!("{primary}-0"), format!("{replica}-0"));
    eprintln!("monitoring: primary pod {primary_pod}, replica pod {replica_pod}");
    wait_value(
        &prom,
        "the primary's role",
        &format!("geodb_pg_is_primary{{{sel},pod=\"{primary_pod}\"}}"),
        |v| v == 1.0,
    )
    .await;

    // The custom query, from the primary only.
    wait_value(
        &prom,
        "the custom metric from the primary",
        &format!("count(app_user_tables_n{{{sel}}})"),
        |v| v == 1.0,
    )
    .await;
    slow_statement(client, ns, &prom, &sel).await;
    connection_burst(client, ns, &prom, &sel, &primary_pod).await;
    let login = superuser_password(client, ns, NAME).await.unwrap();
    let primary_sql = superuser(&pod_ip(client, ns, &primary_pod).await.unwrap(), &login)
        .await
        .unwrap();
    let replica_sql = superuser(&pod_ip(client, ns, &replica_pod).await.unwrap(), &login)
        .await
        .unwrap();
    replication_lag(
        &prom,
        &sel,
        (&primary_sql, &primary_pod),
        (&replica_sql, &replica_pod),
    )
    .await;
    disk_alert(client, ns, &prom, &sel, &primary_sql, &primary_pod).await;
    dashboard_queries(&prom, ns).await;
}

async fn slow_statement(client: &Client, ns: &str, prom: &Prometheus, sel: &str) {
    let pooled = connect(&connection_for(client, ns, "mon-app-pooler", "mon-pooler").await).await;
    for _ in 0..2 {
        pooled.simple_query("SELECT pg_sleep(0.2)").await.unwrap();
    }
    let mean = wait_value(
        prom,
        "a 200 ms statement among the slow ones",
        &format!("max(geodb_pg_slow_statement_mean_seconds{{{sel}}})"),
        |v| v >= 0.19,
    )
    .await;
    wait_value(
        prom,
        "the slow count",
        &format!("max(geodb_pg_slow_statements{{{sel}}})"),
        |v| v >= 1.0,
    )
    .await;
    let samples = prom
        .query(&format!("geodb_pg_slow_statement_mean_seconds{{{sel}}}"))
        .await
        .unwrap();
    for (labels, _) in &samples {
        assert!(labels.contains_key("queryid"), "{labels:?}");
        assert!(
            labels.values().all(|v| !v.contains("pg_sleep")),
            "query text in a label: {labels:?}"
        );
    }
    eprintln!("monitoring: slow statement mean {mean:.3} s");
}

async fn connection_burst(client: &Client, ns: &str, prom: &Prometheus, sel: &str, pod: &str) {
    let gauge = format!("sum(geodb_pg_connections{{{sel},pod=\"{pod}\"}})");
    let before = wait_value(prom, "the connection gauge", &gauge, |_| true).await;
    let conn = connection_for(client, ns, "mon-app-rw", "mon-rw").await;
    let mut held = Vec::new();
    for _ in 0..25 {
        held.push(connect(&conn).await);
    }
    let during = wait_value(prom, "the gauge up by the burst", &gauge, |v| {
        v >= before + 25.0
    })
    .await;
    drop(held);
    let after = wait_value(prom, "the gauge back down", &gauge, |v| v <= before + 3.0).await;
    eprintln!("monitoring: connections {before} -> {during} -> {after}");
}

async fn replication_lag(
    prom: &Prometheus,
    sel: &str,
    (primary, primary_pod): (&tokio_postgres::Client, &str),
    (replica, replica_pod): (&tokio_postgres::Client, &str),
) {
    let bytes = format!("geodb_pg_replication_lag_bytes{{{sel},pod=\"{replica_pod}\"}}");
    wait_value(prom, "no lag while caught up", &bytes, |v| v < 1e6).await;
    replica
        .simple_query("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    primary
        .batch_execute(
            "CREATE TABLE lag_probe AS SELECT g, repeat(md5(g::text), 8) AS pad FROM generate_series(1, 20000) g",
        )
        .await
        .unwrap();
    let risen = wait_value(prom, "lag bytes rise while replay is paused", &bytes, |v| {
        v > 1e6
    })
    .await;
    let seconds = format!("geodb_pg_replication_lag_seconds{{{sel},pod=\"{replica_pod}\"}}");
    wait_value(prom, "lag seconds rise", &seconds, |v| v > 0.0).await;
    let standby = format!("max(geodb_pg_standby_lag_bytes{{{sel},pod=\"{primary_pod}\"}})");
    wait_value(prom, "the primary sees the standby behind", &standby, |v| {
        v > 1e6
    })
    .await;
    replica
        .simple_query("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    wait_value(prom, "lag bytes fall back", &bytes, |v| v == 0.0).await;
    wait_value(prom, "lag seconds fall back", &seconds, |v| v == 0.0).await;
    primary.batch_execute("DROP TABLE lag_probe").await.unwrap();
    eprintln!("monitoring: lag rose to {risen} bytes and fell back to 0");
}

async fn disk_alert(
    client: &Client,
    ns: &str,
    prom: &Prometheus,
    sel: &str,
    primary: &tokio_postgres::Client,
    pod: &str,
) {
    let ip = pod_ip(client, ns, pod).await.unwrap();
    let ratio = || async {
        let (_, page) = http_get(&format!("{ip}:8008"), "/metrics").await.unwrap();
        page.lines()
            .find_map(|l| l.strip_prefix("geodb_pg_data_volume_used_ratio "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap()
    };
    // Unlogged: no WAL, nothing replicated; only the primary's volume fills.
    primary
        .batch_execute("CREATE UNLOGGED TABLE disk_fill (pad text)")
        .await
        .unwrap();
    let mut filled = ratio().await;
    for _ in 0..40 {
        if filled > 0.83 {
            break;
        }
        primary
            .batch_execute("INSERT INTO disk_fill SELECT repeat(md5(g::text), 31) FROM generate_series(1, 10000) g")
            .await
            .unwrap();
        filled = ratio().await;
    }
    assert!(filled > 0.83, "the volume did not fill: {filled}");
    let alert = wait_for(
        "GeoDBDataVolumeFull active for the primary",
        SCRAPED,
        || async {
            let alerts = prom.alerts().await.ok()?;
            alerts.into_iter().find(|(name, _, labels)| {
                name == "GeoDBDataVolumeFull" && labels.get("pod").map(String::as_str) == Some(pod)
            })
        },
    )
    .await;
    let alert = match alert {
        Ok(alert) => alert,
        Err(e) => panic!("{e}; alerts: {:?}", prom.alerts().await),
    };
    primary.batch_execute("DROP TABLE disk_fill").await.unwrap();
    let gauge = format!("geodb_pg_data_volume_used_ratio{{{sel},pod=\"{pod}\"}}");
    wait_value(prom, "the volume freed", &gauge, |v| v < 0.8).await;
    eprintln!(
        "monitoring: volume filled to {filled:.2}, alert {} ({})",
        alert.0, alert.1
    );
}

/// Every query of every dashboard panel answers data from this Prometheus.
async fn dashboard_queries(prom: &Prometheus, ns: &str) {
    let out = std::process::Command::new("python3")
        .arg(repo_root().join("config/monitoring/check-dashboard.py"))
        .args([
            "--print-queries",
            "--var",
            &format!("namespace={ns}"),
            "--var",
            &format!("cluster={NAME}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let queries: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(queries.len() >= 20, "the dashboard's queries: {queries:?}");
    let mut empty = Vec::new();
    for q in &queries {
        let answered = wait_for(
            &format!("data for {q}"),
            Duration::from_secs(30),
            || async { prom.query(q).await.ok().filter(|s| !s.is_empty()).map(drop) },
        )
        .await;
        if answered.is_err() {
            empty.push(q.clone());
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data: {empty:#?}"
    );
    eprintln!(
        "monitoring: {} dashboard queries all answered",
        queries.len()
    );
}
