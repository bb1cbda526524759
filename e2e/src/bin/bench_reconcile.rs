//! `make bench-reconcile`: the operator (release build, its own process, its own RBAC)
//! against a local kube-apiserver; GeoDatabases are created at a steady rate and each is
//! timed from its create request to the moment its status says every object was applied.
//! Then every GeoDatabase is reconciled once more without a spec change and the API
//! writes of those reconciles are counted. Prints a table and writes
//! `target/bench/reconcile.json`.
//!
//! Environment: `BENCH_COUNT` (200), `BENCH_RATE_PER_S` (10), `BENCH_INSTANCES` (3),
//! `BENCH_CONTROL_PLANE_SETTLE_S` (15), `BENCH_IDLE_S` (0: wait between the operator's
//! start and the first create); `BENCH_OPERATOR_LOG` (RUST_LOG of the operator, `warn`),
//! `BENCH_OPERATOR_LOG_COPY` and `BENCH_APISERVER_METRICS_COPY` (files to keep the
//! operator's log and kube-apiserver's final /metrics in: request latency per resource
//! and verb is in `apiserver_request_duration_seconds`).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::TryStreamExt;
use geodb::api::GeoDatabase;
use geodb_e2e::controlplane::{ControlPlane, OPERATOR_USER};
use geodb_e2e::kube_util::{install_crds, install_operator_rbac_for_user, repo_root, wait_for};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use serde_json::json;

const NAMESPACE: &str = "bench";

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

use geodb_e2e::bench::percentile;

/// Sum of a metric's samples in Prometheus text, optionally only those whose labels
/// contain `label_filter`.
fn metric_sum(text: &str, name: &str, label_filter: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| label_filter.is_empty() || label_filter.iter().any(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |sum, v| sum + v)
}

async fn get(port: u16, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    Ok(body)
}

async fn scrape(port: u16) -> anyhow::Result<String> {
    get(port, "/metrics").await
}

fn writes(metrics: &str) -> f64 {
    metric_sum(
        metrics,
        "geodb_kube_api_requests_total",
        &[
            "method=\"POST\"",
            "method=\"PUT\"",
            "method=\"PATCH\"",
            "method=\"DELETE\"",
        ],
    )
}

fn memory_kib(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .with_context(|| format!("{field} missing in /proc/{pid}/status"))
}

/// Quantile from a Prometheus histogram's cumulative buckets (upper bound of the bucket).
fn histogram_quantile(text: &str, name: &str, q: f64) -> f64 {
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    buckets
        .iter()
        .find(|(_, count)| *count >= q * total)
        .map(|(bound, _)| *bound)
        .unwrap_or(f64::NAN)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let count = env_number("BENCH_COUNT", 200) as usize;
    let rate = env_number("BENCH_RATE_PER_S", 10).max(1);
    let instances = env_number("BENCH_INSTANCES", 3) as i32;

    let cp = ControlPlane::start().await?;
    let admin = cp.client()?;
    install_crds(&admin).await?;
    install_operator_rbac_for_user(&admin, OPERATOR_USER).await?;
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?;
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &ns)
        .await?;

    // A control plane that has just started spends its first seconds on its own start-up
    // work (measured: creates in the first ~4 s took about a second each, whoever sent
    // them); the benchmark is of the operator, so the control plane settles first.
    let settle_s = env_number("BENCH_CONTROL_PLANE_SETTLE_S", 15);
    tokio::time::sleep(Duration::from_secs(settle_s)).await;

    // The operator as users run it: its own process, release build, its own identity.
    let binary = repo_root().join("target/release/geodb");
    if !binary.exists() {
        bail!(
            "{} missing: run `cargo build --release -p geodb`",
            binary.display()
        );
    }
    let port = free_port()?;
    let log_path = cp.temp_dir().join("operator.log");
    let log = std::fs::File::create(&log_path)?;
    let mut operator = tokio::process::Command::new(&binary)
        .args(["operator", "--leader-elect=false"])
        .arg(format!("--http-addr=127.0.0.1:{port}"))
        .env("KUBECONFIG", cp.operator_kubeconfig_path())
        .env(
            "RUST_LOG",
            std::env::var("BENCH_OPERATOR_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .context("starting the operator")?;
    let pid = operator.id().context("operator pid")?;
    // Ready: the operator's watch caches hold their first lists.
    wait_for("operator /readyz", Duration::from_secs(30), || async {
        get(port, "/readyz")
            .await
            .ok()
            .filter(|m| m.contains("200 OK"))
    })
    .await?;

    // Converged = status written for the current generation (the last pipeline step).
    let converged: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let api: Api<GeoDatabase> = Api::namespaced(admin.clone(), NAMESPACE);
    let seen = converged.clone();
    let watch = tokio::spawn(
        watcher(api.clone(), watcher::Config::default())
            .applied_objects()
            .try_for_each(move |db: GeoDatabase| {
                let seen = seen.clone();
                async move {
                    let done = db.status.as_ref().is_some_and(|s| {
                        s.observed_generation.is_some()
                            && s.observed_generation == db.metadata.generation
                            && s.current_primary.is_some()
                    });
                    if done {
                        if let Ok(mut map) = seen.lock() {
                            map.entry(db.name_any()).or_insert_with(Instant::now);
                        }
                    }
                    Ok(())
                }
            }),
    );

    let template: GeoDatabase = serde_yaml::from_str(&std::fs::read_to_string(
        repo_root().join("config/samples/geodatabase.yaml"),
    )?)?;
    // Optional idle time between the operator's start and the first create.
    tokio::time::sleep(Duration::from_secs(env_number("BENCH_IDLE_S", 0))).await;
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    for i in 0..count {
        ticker.tick().await;
        let mut db = template.clone();
        let name = format!("bench-{i:03}");
        db.metadata.name = Some(name.clone());
        db.spec.instances = instances;
        sent.insert(name, Instant::now());
        api.create(&PostParams::default(), &db).await?;
    }
    wait_for(
        &format!("{count} GeoDatabases converged"),
        Duration::from_secs(600),
        || async { (converged.lock().ok()?.len() >= count).then_some(()) },
    )
    .await?;
    let create_phase = started.elapsed();

    // In create order, for the report's context: where the slow ones fall.
    let in_create_order: Vec<u64> = {
        let done = converged.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        (0..count)
            .filter_map(|i| {
                let name = format!("bench-{i:03}");
                Some(
                    done.get(&name)?
                        .duration_since(*sent.get(&name)?)
                        .as_millis() as u64,
                )
            })
            .collect()
    };
    let mut latencies: Vec<f64> = {
        let done = converged.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        sent.iter()
            .filter_map(|(name, at)| Some(done.get(name)?.duration_since(*at).as_secs_f64() * 1e3))
            .collect()
    };
    latencies.sort_by(f64::total_cmp);
    // The same, without the GeoDatabases created in the operator's first 5 s (its cold
    // start: connections, caches), to tell the start-up burst from the steady state.
    let mut warm_latencies: Vec<f64> = {
        let done = converged.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        sent.iter()
            .filter(|(_, at)| at.duration_since(started) >= Duration::from_secs(5))
            .filter_map(|(name, at)| Some(done.get(name)?.duration_since(*at).as_secs_f64() * 1e3))
            .collect()
    };
    warm_latencies.sort_by(f64::total_cmp);

    // Every object exists.
    let sts = Api::<StatefulSet>::namespaced(admin.clone(), NAMESPACE)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=geodb-operator"))
        .await?
        .items
        .len();
    let deployments = Api::<Deployment>::namespaced(admin.clone(), NAMESPACE)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=geodb-operator"))
        .await?
        .items
        .len();
    if sts != count * instances as usize || deployments != count * 2 {
        bail!(
            "expected {} StatefulSets and {} Deployments (two poolers each), found {sts} and {deployments}",
            count * instances as usize,
            count * 2
        );
    }

    // Settle: kube-controller-manager creates pods and PVCs, the operator labels pods.
    // Wait until a few seconds pass without a single operator write.
    let mut last_writes = writes(&scrape(port).await?);
    let mut quiet_since = Instant::now();
    let settle_deadline = Instant::now() + Duration::from_secs(300);
    while quiet_since.elapsed() < Duration::from_secs(5) {
        if Instant::now() > settle_deadline {
            bail!("the operator kept writing for 5 minutes after convergence");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = writes(&scrape(port).await?);
        if now != last_writes {
            last_writes = now;
            quiet_since = Instant::now();
        }
    }

    // Steady state: one more reconcile of every GeoDatabase, spec unchanged.
    let before = scrape(port).await?;
    let (writes_before, reconciles_before) = (
        writes(&before),
        metric_sum(&before, "geodb_reconciliations_total", &[]),
    );
    for name in (0..count).map(|i| format!("bench-{i:03}")) {
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"bench.geodb.io/touch": "1"}}})),
        )
        .await?;
    }
    let reconciles_after = wait_for(
        "a reconcile of every touched GeoDatabase",
        Duration::from_secs(120),
        || async {
            let m = scrape(port).await.ok()?;
            let r = metric_sum(&m, "geodb_reconciliations_total", &[]);
            (r >= reconciles_before + count as f64).then_some(r)
        },
    )
    .await?;
    let after = scrape(port).await?;
    let steady_writes = writes(&after) - writes_before;
    let steady_reconciles = reconciles_after - reconciles_before;
    let peak_rss_mib = memory_kib(pid, "VmHWM:")? / 1024.0;
    let rss_mib = memory_kib(pid, "VmRSS:")? / 1024.0;
    // A stale view (the status write found a newer object) is a requeue, not a failure.
    let stale_views = metric_sum(
        &after,
        "geodb_reconcile_errors_total",
        &["error=\"stale_view\""],
    );
    let reconcile_errors = metric_sum(&after, "geodb_reconcile_errors_total", &[]) - stale_views;
    // The operator's /metrics as Prometheus would scrape it, with every GeoDatabase's
    // series in it (`make bench-metrics` reads these figures).
    let mut scrapes_ms = Vec::new();
    let mut page_bytes = 0;
    for _ in 0..100 {
        let at = Instant::now();
        page_bytes = scrape(port).await?.len();
        scrapes_ms.push(at.elapsed().as_secs_f64() * 1e3);
    }
    scrapes_ms.sort_by(f64::total_cmp);
    if let Ok(path) = std::env::var("BENCH_APISERVER_METRICS_COPY") {
        let text = admin
            .request_text(http::Request::get("/metrics").body(Vec::new())?)
            .await?;
        std::fs::write(path, text)?;
    }
    watch.abort();
    let _ = operator.kill().await;
    if let Ok(keep) = std::env::var("BENCH_OPERATOR_LOG_COPY") {
        std::fs::copy(&log_path, keep)?;
    }

    let figures = json!({
        "create_to_applied_p50_ms": percentile(&latencies, 50.0),
        "create_to_applied_p99_ms": percentile(&latencies, 99.0),
        "create_to_applied_p90_ms": percentile(&latencies, 90.0),
        "create_to_applied_p95_ms": percentile(&latencies, 95.0),
        "create_to_applied_max_ms": percentile(&latencies, 100.0),
        "create_to_applied_over_300ms_count": latencies.iter().filter(|l| **l > 300.0).count(),
        "after_first_5s_create_to_applied_p50_ms": percentile(&warm_latencies, 50.0),
        "after_first_5s_create_to_applied_p99_ms": percentile(&warm_latencies, 99.0),
        "reconcile_duration_p50_ms": histogram_quantile(&after, "geodb_reconcile_duration_seconds", 0.5) * 1e3,
        "reconcile_duration_p99_ms": histogram_quantile(&after, "geodb_reconcile_duration_seconds", 0.99) * 1e3,
        "steady_state_writes_per_reconcile_count": steady_writes / steady_reconciles.max(1.0),
        "steady_state_reconciles_count": steady_reconciles,
        "operator_peak_rss_mib": peak_rss_mib,
        "operator_rss_after_mib": rss_mib,
        "reconcile_errors_count": reconcile_errors,
        "stale_view_requeues_count": stale_views,
        "create_phase_s": create_phase.as_secs_f64(),
        "operator_scrape_p50_ms": percentile(&scrapes_ms, 50.0),
        "operator_scrape_p99_ms": percentile(&scrapes_ms, 99.0),
        "operator_metrics_page_bytes_count": page_bytes,
    });
    let report = json!({
        "figures": figures,
        "targets": {
            "create_to_applied_p99_ms": {"max": 300},
            "steady_state_writes_per_reconcile_count": {"max": 0},
            "operator_peak_rss_mib": {"max": 100},
        },
        "context": {
            "geodatabases": count,
            "create_rate_per_s": rate,
            "control_plane_settle_s": settle_s,
            "instances_per_geodatabase": instances,
            "objects_per_geodatabase": "StatefulSet per instance, Service per instance + rw/ro + 2 poolers, 3 ConfigMaps, 8 Secrets, 2 pooler Deployments, ServiceAccount, RoleBinding",
            "kube_apiserver": geodb_e2e::controlplane::K8S_VERSION,
            "etcd": geodb_e2e::controlplane::ETCD_VERSION,
            "controllers": "kube-controller-manager runs (StatefulSet pods and PVCs are created; no scheduler, no kubelet)",
            "operator_build": "release",
            "create_to_applied_ms_in_create_order": in_create_order,
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        },
    });
    geodb_e2e::bench::write_report("reconcile", &report)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums() {
        let text = "# HELP x\ngeodb_kube_api_requests_total{method=\"PATCH\"} 3\n\
                    geodb_kube_api_requests_total{method=\"GET\"} 10\n\
                    geodb_kube_api_requests_total{method=\"POST\"} 2\n";
        assert_eq!(writes(text), 5.0);
        assert_eq!(metric_sum(text, "geodb_kube_api_requests_total", &[]), 15.0);
    }
}
