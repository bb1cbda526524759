//! What every `make bench-<area>` shares: percentiles and the report (a table on stdout
//! and `target/bench/<area>.json` with `figures`, `targets` and `context`).

use std::process::Command;

use anyhow::{bail, Context as _};

use crate::drill::Endpoint;
use crate::kube_util::repo_root;

/// Nearest-rank percentile of values (sorted here).
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Write `report` to `target/bench/<area>.json` and print its figures with their targets.
pub fn write_report(area: &str, report: &serde_json::Value) -> anyhow::Result<()> {
    let dir = repo_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{area}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(report)?)?;
    println!("{:<48} {:>12} {:>10}", "figure", "value", "target");
    for (name, value) in report["figures"].as_object().into_iter().flatten() {
        let target = report["targets"][name]
            .as_object()
            .and_then(|t| t.iter().next().map(|(k, v)| format!("{k} {v}")))
            .unwrap_or_default();
        println!(
            "{name:<48} {:>12.2} {target:>10}",
            value.as_f64().unwrap_or(f64::NAN)
        );
    }
    println!("written: {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}

// pgbench, shared by the benchmarks that load the local cluster.

pub fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one pgbench run reported.
#[derive(Debug)]
pub struct Run {
    pub tps: f64,
    pub aborted: usize,
    pub failed: u64,
}

pub fn conninfo(host: &str, port: u16, e: &Endpoint) -> String {
    format!(
        "host={host} port={port} user={} dbname={} sslmode=require connect_timeout=10",
        e.user, e.dbname
    )
}

/// Run pgbench with `args` against `conninfo`; its TPS, aborted clients and failed
/// transactions.
pub fn pgbench(conninfo: &str, password: &str, args: &[&str]) -> anyhow::Result<Run> {
    let out = Command::new("pgbench")
        .args(args)
        .arg(conninfo)
        .env("PGPASSWORD", password)
        .output()
        .context("running pgbench (postgresql-client)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if args.first() == Some(&"-i") {
        // Initialisation reports no rate.
        if !out.status.success() {
            bail!("pgbench -i failed\n{stdout}\n{stderr}");
        }
        return Ok(Run {
            tps: 0.0,
            aborted: 0,
            failed: 0,
        });
    }
    let tps = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok());
    let failed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let aborted = stderr.matches("aborted").count();
    let Some(tps) = tps else {
        bail!("pgbench {args:?}: no tps in its output\n{stdout}\n{stderr}");
    };
    if aborted > 0 {
        eprintln!(
            "pgbench {args:?}: {aborted} aborted\n{}",
            stderr.lines().take(10).collect::<Vec<_>>().join("\n")
        );
    }
    Ok(Run {
        tps,
        aborted,
        failed,
    })
}

/// A namespace `ns` and in it the GeoDatabase `bench` with `spec`, Ready with all of its
/// `spec.instances` (the benchmarks' common start).
pub async fn create_bench_cluster(
    client: &kube::Client,
    ns: &str,
    spec: serde_json::Value,
) -> anyhow::Result<()> {
    use geodb::api::{GeoDatabase, Phase};
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, PostParams};
    let instances = spec["instances"].as_i64().unwrap_or(1) as i32;
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?,
        )
        .await?;
    let db: GeoDatabase = serde_json::from_value(serde_json::json!({
        "apiVersion": "geodb.io/v1alpha1", "kind": "GeoDatabase",
        "metadata": {"name": "bench"},
        "spec": spec,
    }))?;
    let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &db).await?;
    crate::kube_util::wait_for(
        "bench Ready",
        std::time::Duration::from_secs(600),
        || async {
            let s = api.get("bench").await.ok()?.status?;
            (s.phase == Some(Phase::Ready) && s.ready_instances == instances).then_some(())
        },
    )
    .await
}
