//! `make bench-failover`: every failover drill `BENCH_RUNS` times (default 5) on the
//! local cluster, with writers through `-rw` and the pooler and a watcher on every
//! instance. Prints a table and writes `target/bench/failover.json`.
//!
//! RTO is measured from the fault to the first acknowledged write after the outage.
//! `BENCH_FAULTS` (names, comma-separated, e.g. `network_cut`) runs only those drills.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use geodb_e2e::drill::{Fault, Target};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::DeleteParams;
use kube::{Api, Client};
use serde_json::json;

use geodb_e2e::bench::percentile;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let client = Client::try_default()
        .await
        .context("KUBECONFIG must point at the local cluster")?;
    let ns = format!("bench-failover-{}", std::process::id());
    geodb_e2e::bench::create_bench_cluster(
        &client,
        &ns,
        json!({"instances": 3, "storage": {"size": "1Gi"},
               "postgresql": {"parameters": {"shared_buffers": "32MB", "max_connections": "50"}},
               "replication": {"maxLagBytes": 2097152}}),
    )
    .await?;
    let target = Target {
        client: client.clone(),
        ns: ns.clone(),
        name: "bench".into(),
        instances: 3,
    };
    target.prepare_tables().await?;
    let timeout = Duration::from_secs(180);
    let started = Instant::now();
    let only = std::env::var("BENCH_FAULTS").unwrap_or_default();
    let faults: Vec<Fault> = Fault::ALL
        .into_iter()
        .filter(|f| only.is_empty() || only.split(',').any(|n| n.trim() == f.name()))
        .collect();

    let mut rto_rw: Vec<(Fault, f64)> = Vec::new();
    let mut rto_pooler: Vec<(Fault, f64)> = Vec::new();
    let mut pauses: Vec<(Fault, f64)> = Vec::new();
    let mut server_exits_ms: Vec<f64> = Vec::new();
    let (mut violations, mut lost_acked, mut extra_promotions) = (0usize, 0usize, 0usize);
    let mut in_place_lost = 0usize;
    let (mut partition_late_writes, mut partition_discarded) = (0usize, 0usize);
    let mut pod_gone_s: Vec<f64> = Vec::new();
    let mut lag_out = Vec::new();
    let mut lag_back = Vec::new();
    let mut id_base = 0i64;
    for run in 0..runs {
        for fault in faults.iter().copied() {
            id_base += 10_000_000;
            let report = target
                .drill(fault, id_base, timeout)
                .await
                .with_context(|| format!("run {run}: {}", fault.name()))?;
            eprintln!("run {run} {:<16} rto_rw={:?} rto_pooler={:?} pause={:?} violations={} missing={} {} -> {}",
                fault.name(), report.rto_rw, report.rto_pooler, report.write_pause, report.violations.len(),
                report.missing.len(), report.old_primary, report.new_primary);
            violations += report.violations.len();
            lost_acked += report.missing.len();
            let expected = i32::from(fault.fails_over());
            extra_promotions += (report.failovers_after - report.failovers_before - expected)
                .unsigned_abs() as usize;
            if !fault.fails_over() {
                in_place_lost += report.missing.len();
            }
            if let Some(gone) = report.old_pod_gone_after {
                pod_gone_s.push(gone.as_secs_f64());
            }
            if let Some(rto) = report.rto_rw {
                rto_rw.push((fault, rto.as_secs_f64()));
            }
            if let Some(rto) = report.rto_pooler {
                rto_pooler.push((fault, rto.as_secs_f64()));
            }
            pauses.push((fault, report.write_pause.as_secs_f64()));
            if fault == Fault::KillPostmaster {
                if let Some(stopped) = report.old_primary_stopped_after {
                    server_exits_ms.push(stopped.as_secs_f64() * 1000.0);
                }
            }
        }
        id_base += 10_000_000;
        let partition = geodb_e2e::partition::partial_partition(&target, id_base, timeout)
            .await
            .with_context(|| format!("run {run}: partial partition"))?;
        eprintln!("run {run} partial partition: {partition:?}");
        violations += partition.violations.len();
        partition_late_writes += partition.cut_side_acks_after_promotion;
        partition_discarded += partition.cut_side_discarded;
        let (left, back, replica) = target
            .lagging_replica(timeout)
            .await
            .with_context(|| format!("run {run}: lagging replica"))?;
        eprintln!("run {run} lagging replica {replica}: out of -ro {left:?}, back {back:?}");
        lag_out.push(left.as_secs_f64());
        lag_back.push(back.as_secs_f64());
    }

    let of = |values: &[(Fault, f64)], fault: Fault| -> Vec<f64> {
        values
            .iter()
            .filter(|(f, _)| *f == fault)
            .map(|(_, v)| *v)
            .collect()
    };
    let unplanned = |values: &[(Fault, f64)]| -> Vec<f64> {
        values
            .iter()
            .filter(|(f, _)| *f != Fault::Switchover && f.fails_over())
            .map(|(_, v)| *v)
            .collect()
    };
    let mut figures = serde_json::Map::new();
    let mut p50_and_max = |name: String, values: &[f64]| {
        figures.insert(name.replace("{}", "p50"), json!(percentile(values, 50.0)));
        figures.insert(name.replace("{}", "max"), json!(percentile(values, 100.0)));
    };
    for fault in [
        Fault::DeletePod,
        Fault::KillPostmaster,
        Fault::NetworkCut,
        Fault::OperatorKilled,
    ] {
        p50_and_max(
            format!("{}_rto_rw_{{}}_s", fault.name()),
            &of(&rto_rw, fault),
        );
        p50_and_max(
            format!("{}_rto_pooler_{{}}_s", fault.name()),
            &of(&rto_pooler, fault),
        );
    }
    p50_and_max("failover_rto_rw_{}_s".into(), &unplanned(&rto_rw));
    p50_and_max("failover_rto_pooler_{}_s".into(), &unplanned(&rto_pooler));
    p50_and_max(
        "switchover_write_pause_{}_s".into(),
        &of(&pauses, Fault::Switchover),
    );
    p50_and_max("lagging_replica_out_of_ro_{}_s".into(), &lag_out);
    // After a SIGKILL of the postmaster, how long its backends can still commit.
    p50_and_max(
        "killed_primary_processes_exit_{}_ms".into(),
        &server_exits_ms,
    );
    p50_and_max("lagging_replica_back_in_ro_{}_s".into(), &lag_back);
    p50_and_max("deleted_pod_gone_{}_s".into(), &pod_gone_s);
    figures.insert(
        "postmaster_crash_lost_acknowledged_writes_count".into(),
        json!(in_place_lost),
    );
    figures.insert(
        "partition_writes_after_promotion_count".into(),
        json!(partition_late_writes),
    );
    figures.insert(
        "partition_cut_side_writes_discarded_count".into(),
        json!(partition_discarded),
    );
    figures.insert("two_writable_instances_count".into(), json!(violations));
    figures.insert("lost_acknowledged_writes_count".into(), json!(lost_acked));
    figures.insert("extra_promotions_count".into(), json!(extra_promotions));
    let figures = serde_json::Value::Object(figures);
    let report = json!({
        "figures": figures,
        "targets": {
            "failover_rto_rw_p50_s": {"max": 10}, "failover_rto_rw_max_s": {"max": 20},
            "failover_rto_pooler_p50_s": {"max": 10}, "failover_rto_pooler_max_s": {"max": 20},
            "switchover_write_pause_max_s": {"max": 5},
            "kill_postmaster_rto_rw_p50_s": {"max": 3},
            "postmaster_crash_lost_acknowledged_writes_count": {"max": 0},
            "deleted_pod_gone_max_s": {"max": 10},
            "partition_writes_after_promotion_count": {"max": 0},
            "lagging_replica_out_of_ro_max_s": {"max": 10},
            "two_writable_instances_count": {"max": 0},
            "extra_promotions_count": {"max": 0},
        },
        "context": {
            "runs_per_fault": runs,
            "faults": faults.iter().map(|f| f.name()).collect::<Vec<_>>(),
            "instances": 3, "replication": "asynchronous", "failover_delay_s": 5,
            "writer": "one INSERT every 20 ms through -rw and one through the pooler",
            "watcher": "pg_is_in_recovery() on every instance every 100 ms",
            "cluster": "local single-node cluster (e2e/cluster), kubelet + containerd",
            "duration_s": started.elapsed().as_secs_f64(),
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        },
    });
    geodb_e2e::bench::write_report("failover", &report)?;
    Api::<Namespace>::all(client.clone())
        .delete(&ns, &DeleteParams::default())
        .await?;
    Ok(())
}
