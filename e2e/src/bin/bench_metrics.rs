//! `make bench-metrics`: what monitoring costs. On the local cluster, pgbench loads one
//! instance (select-only) in runs that alternate without and with a scrape of the
//! instance's and the pooler's `/metrics` every second; the scrapes' latency, the TPS
//! ratio of the two kinds of run, and the agent's CPU per scrape and RSS before the first
//! scrape and after all of them. The operator's `/metrics` with 200 GeoDatabases comes
//! from `target/bench/reconcile.json` (`make bench-reconcile`, which the Makefile target
//! runs first). Prints a table and writes `target/bench/metrics.json`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use geodb_e2e::bench::{
    conninfo, create_bench_cluster, env_secs, percentile, pgbench, write_report,
};
use geodb_e2e::drill::{pod_ip, postmaster_pid, superuser, superuser_password, Endpoint};
use geodb_e2e::kube_util::repo_root;
use geodb_e2e::prometheus::http_get;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// `field` (VmRSS:, VmHWM:) of a process, in MiB.
fn memory_mib(pid: i32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("{field} of {pid}"))?;
    Ok(kib / 1024.0)
}

/// User and system CPU of a process so far, in milliseconds.
fn cpu_ms(pid: i32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold blanks) start at the last ')'.
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11).context("utime")?.parse::<f64>()?
        + fields.get(12).context("stime")?.parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks * 1000.0 / hz)
}

/// The host PID of the child of `parent` whose PID in its own namespace is `ns_pid`.
fn host_pid(parent: i32, ns_pid: i32) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let ppid: i32 = field("PPid:")?.parse().ok()?;
        let inner: i32 = field("NSpid:")?.split_whitespace().last()?.parse().ok()?;
        (ppid == parent && inner == ns_pid).then_some(pid)
    })
}

/// Scrape every endpoint once a second until `stop`; each scrape's latency, per endpoint.
fn scraper(
    endpoints: Vec<String>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Vec<f64>>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            for (i, addr) in endpoints.iter().enumerate() {
                let at = Instant::now();
                let answered = http_get(addr, "/metrics").await;
                let ms = at.elapsed().as_secs_f64() * 1e3;
                if matches!(answered, Ok((200, _))) {
                    if let Ok(mut seen) = seen.lock() {
                        seen[i].push(ms);
                    }
                } else {
                    eprintln!("scrape of {addr} failed: {answered:?}");
                }
            }
        }
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let secs = env_secs("BENCH_SECONDS", 20);
    let pairs = env_secs("BENCH_PAIRS", 3);
    let client = Client::try_default()
        .await
        .context("KUBECONFIG must point at the local cluster")?;
    let ns = format!("bench-metrics-{}", std::process::id());
    create_bench_cluster(
        &client,
        &ns,
        json!({"instances": 1, "storage": {"size": "2Gi"},
               "postgresql": {"parameters": {"shared_buffers": "64MB"}}}),
    )
    .await?;
    let rw = Endpoint::of(&client, &ns, "bench-app-rw", "bench-rw").await?;
    let direct = conninfo(&rw.host, rw.port, &rw);
    // Ready can run ahead of the Service's endpoints in kube-proxy.
    geodb_e2e::kube_util::wait_for(
        "pgbench -i through bench-rw",
        Duration::from_secs(60),
        || async { pgbench(&direct, &rw.password, &["-i", "-q", "-s", "10"]).ok() },
    )
    .await?;

    let (_, agent) = postmaster_pid(&ns, "bench-1-0")?;
    let instance = format!("{}:8008", pod_ip(&client, &ns, "bench-1-0").await?);
    let poolers = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels("app.kubernetes.io/component=pooler"))
        .await?;
    let pooler_pod = poolers.items.first().context("no pooler pod")?.name_any();
    let pooler = format!("{}:8010", pod_ip(&client, &ns, &pooler_pod).await?);
    let rss_before = memory_mib(agent, "VmRSS:")?;
    // The exporter's backend: its connection opens at the first scrape.
    let (postmaster, _) = postmaster_pid(&ns, "bench-1-0")?;
    http_get(&instance, "/metrics").await?;
    let login = superuser_password(&client, &ns, "bench").await?;
    let sql = superuser(&pod_ip(&client, &ns, "bench-1-0").await?, &login).await?;
    let ns_pid: i32 = sql
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'geodb-exporter'",
            &[],
        )
        .await?
        .get(0);
    drop(sql);
    let backend = host_pid(postmaster, ns_pid).context("the exporter's backend process")?;
    let scrape_cpu = || -> anyhow::Result<f64> { Ok(cpu_ms(agent)? + cpu_ms(backend)?) };

    let load = ["-S", "-c", "8", "-j", "2", "-T", &secs.to_string()];
    let seen: Arc<Mutex<Vec<Vec<f64>>>> = Arc::new(Mutex::new(vec![vec![], vec![]]));
    let (mut quiet_tps, mut scraped_tps, mut ratios) = (vec![], vec![], vec![]);
    let (mut quiet_cpu, mut scraped_cpu) = (0.0, 0.0);
    // A first run warms the caches (its figures are dropped); then each pair runs both
    // kinds, the order alternating, so a drift of the machine falls on both sides.
    pgbench(&direct, &rw.password, &load)?;
    for pair in 0..pairs {
        let run = |scraping: bool| -> anyhow::Result<(f64, f64)> {
            let cpu = scrape_cpu()?;
            let stop = Arc::new(AtomicBool::new(false));
            let task = scraping.then(|| {
                scraper(
                    vec![instance.clone(), pooler.clone()],
                    stop.clone(),
                    seen.clone(),
                )
            });
            // The scraper keeps its worker while pgbench blocks this one.
            let tps = tokio::task::block_in_place(|| pgbench(&direct, &rw.password, &load))?.tps;
            stop.store(true, Ordering::Relaxed);
            if let Some(task) = task {
                task.abort();
            }
            Ok((tps, scrape_cpu()? - cpu))
        };
        let ((quiet, q_cpu), (scraped, s_cpu)) = if pair % 2 == 0 {
            let q = run(false)?;
            (q, run(true)?)
        } else {
            let s = run(true)?;
            (run(false)?, s)
        };
        quiet_cpu += q_cpu;
        scraped_cpu += s_cpu;
        eprintln!("pair {pair}: {quiet:.0} tps quiet, {scraped:.0} tps scraped");
        ratios.push(scraped / quiet);
        quiet_tps.push(quiet);
        scraped_tps.push(scraped);
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rss_after = memory_mib(agent, "VmRSS:")?;
    let seen = seen
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let scrapes = seen[0].len() as f64;
    let ratio = percentile(&ratios, 50.0);
    let operator = std::fs::read_to_string(repo_root().join("target/bench/reconcile.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    let operator_p99 = operator
        .as_ref()
        .and_then(|r| r["figures"]["operator_scrape_p99_ms"].as_f64());
    let mut figures = json!({
        "instance_scrape_p50_ms": percentile(&seen[0], 50.0),
        "instance_scrape_p99_ms": percentile(&seen[0], 99.0),
        "pooler_scrape_p50_ms": percentile(&seen[1], 50.0),
        "pooler_scrape_p99_ms": percentile(&seen[1], 99.0),
        "scraped_over_quiet_tps_ratio": ratio,
        "scrape_tps_cost_ratio": 1.0 - ratio,
        "quiet_tps_per_s": percentile(&quiet_tps, 50.0),
        "scraped_tps_per_s": percentile(&scraped_tps, 50.0),
        "scrape_cpu_per_scrape_ms": (scraped_cpu - quiet_cpu) / scrapes.max(1.0),
        // The agent's and its backend's CPU while scraping every second, over the
        // machine's capacity: what the load could lose at most when CPU bound.
        "scrape_cpu_share_of_machine_ratio": (scraped_cpu - quiet_cpu)
            / (pairs as f64 * secs as f64 * 1000.0 * cpus as f64),
        "agent_rss_before_scrapes_mib": rss_before,
        "agent_rss_after_scrapes_mib": rss_after,
        "exporter_rss_added_mib": rss_after - rss_before,
        "instance_scrapes_count": scrapes,
    });
    let mut targets = json!({
        "instance_scrape_p99_ms": {"max": 200},
        "pooler_scrape_p99_ms": {"max": 200},
        "exporter_rss_added_mib": {"max": 20},
        "scrape_cpu_share_of_machine_ratio": {"max": 0.02},
    });
    if let Some(p99) = operator_p99 {
        figures["operator_scrape_p99_ms"] = json!(p99);
        figures["operator_scrape_p50_ms"] = operator.as_ref().map_or(json!(null), |r| {
            r["figures"]["operator_scrape_p50_ms"].clone()
        });
        targets["operator_scrape_p99_ms"] = json!({"max": 200});
    }
    let report = json!({
        "figures": figures,
        "targets": targets,
        "context": {
            "load": "pgbench -S -c 8 -j 2, scale 10, straight at the primary over TLS",
            "run_seconds": secs,
            "pairs": pairs,
            "scrape_interval_s": 1,
            "scrape_tps_cost": "1 - median over pairs of scraped TPS / unscraped TPS (runs interleaved; pgbench's run-to-run spread here is about 15 %, so this figure is noise around 0)",
            "scrape_cpu": "CPU of the agent and of the exporter's backend (host /proc), scraped runs minus quiet runs",
            "tps_ratios": ratios,
            "operator": "from target/bench/reconcile.json: 200 GeoDatabases, 100 scrapes after convergence",
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        },
    });
    write_report("metrics", &report)?;
    let _ = Api::<Namespace>::all(client)
        .delete(&ns, &DeleteParams::default())
        .await;
    Ok(())
}
