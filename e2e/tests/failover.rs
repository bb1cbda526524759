//! Failover drills on the real local cluster: every fault with writers and a watcher on,
//! asserting one writable instance at most, the old primary back as a replica, exactly
//! one promotion per fault, and no acknowledged write lost where none may be.
//! (`make bench-failover` runs the same drills repeatedly for the figures.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use geodb::api::{GeoDatabase, Phase};
use geodb_e2e::drill::{DrillReport, Fault, Target};
use geodb_e2e::kube_util::wait_for;
use kube::api::PostParams;
use kube::{Api, Client};

const TIMEOUT: Duration = Duration::from_secs(180);

fn geodatabase(name: &str, synchronous: bool) -> GeoDatabase {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "geodb.io/v1alpha1",
        "kind": "GeoDatabase",
        "metadata": {"name": name},
        "spec": {
            "instances": 3,
            "storage": {"size": "1Gi"},
            "postgresql": {"parameters": {"shared_buffers": "32MB", "max_connections": "50"}},
            "replication": {"synchronous": synchronous, "maxLagBytes": 2097152},
        }
    }))
    .unwrap()
}

async fn create(client: &Client, ns: &str, db: &GeoDatabase) -> Target {
    create_with(client, ns, db, 3).await
}

async fn create_with(client: &Client, ns: &str, db: &GeoDatabase, instances: usize) -> Target {
    let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), db).await.unwrap();
    let name = db.metadata.name.clone().unwrap();
    wait_for(
        &format!("{name} Ready"),
        Duration::from_secs(600),
        || async {
            let s = api.get(&name).await.ok()?.status?;
            (s.phase == Some(Phase::Ready) && s.ready_instances == instances as i32).then_some(())
        },
    )
    .await
    .unwrap();
    let target = Target {
        client: client.clone(),
        ns: ns.to_owned(),
        name,
        instances,
    };
    target.prepare_tables().await.unwrap();
    target
}

fn check(report: &DrillReport, synchronous: bool) {
    eprintln!("{report:?}");
    let fault = report.fault.name();
    assert!(
        report.violations.is_empty(),
        "{fault}: two writable instances: {:?}",
        report.violations
    );
    assert!(
        report.zombies_left.is_empty(),
        "{fault}: exited processes never reaped in the old primary's pod: {:?}",
        report.zombies_left
    );
    assert!(
        report.watcher_rounds > 10,
        "{fault}: the watcher barely ran"
    );
    if let Some(gone) = report.old_pod_gone_after {
        // The agent stops PostgreSQL on the stop signal: seconds, not the grace period.
        assert!(
            gone < Duration::from_secs(15),
            "{fault}: the deleted pod took {gone:?} to go"
        );
    }
    if report.fault.fails_over() {
        check_failover(report, synchronous);
    } else {
        // Crash recovery in place: same primary, same timeline, nothing lost.
        assert_eq!(
            report.new_primary, report.old_primary,
            "{fault}: the primary changed"
        );
        assert_eq!(
            report.failovers_after, report.failovers_before,
            "{fault}: no promotion"
        );
        assert_eq!(
            report.timeline_after, report.timeline_before,
            "{fault}: same timeline"
        );
        assert!(
            report.missing.is_empty(),
            "{fault}: acknowledged writes lost: {:?}",
            report.missing
        );
    }
    assert!(
        report.rto_rw.is_some() || report.fault == Fault::Switchover,
        "{fault}: no outage seen"
    );
    assert_eq!(
        report.pooler_read_only_after_rto, 0,
        "{fault}: pooled writes reached a read-only instance after recovery: {:?}",
        report.pooler_errors
    );
    if report.fault == Fault::Switchover {
        // The read-write pooler was paused across it: clients waited, none failed, and
        // not for long (`make bench-pooler` measures how long).
        assert!(
            report.pooler_errors.is_empty(),
            "switchover: pooled writes failed: {:?}",
            report.pooler_errors
        );
        assert!(
            report.pooler_pause < Duration::from_secs(5),
            "switchover: pooled writes stalled for {:?}",
            report.pooler_pause
        );
    }
}

/// The read-write pooler of `cluster` says it pinned its server connections to
/// `instance`'s own Service and resumed (rather than waiting for `-rw` to follow).
async fn assert_pooler_follows(client: &Client, ns: &str, cluster: &str, instance: &str) {
    use geodb::names::{COMPONENT_POOLER, LABEL_CLUSTER, LABEL_COMPONENT};
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{ListParams, LogParams};
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("{LABEL_CLUSTER}={cluster},{LABEL_COMPONENT}={COMPONENT_POOLER}");
    let listed = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap();
    assert!(!listed.items.is_empty(), "no read-write pooler pod");
    let host = format!("\"primary\":\"{instance}.{ns}.svc\"");
    for pod in listed.items {
        let name = pod.metadata.name.unwrap_or_default();
        let params = LogParams {
            container: Some("pgbouncer".into()),
            ..LogParams::default()
        };
        let log = pods.logs(&name, &params).await.unwrap_or_default();
        let pinned = log.lines().any(|line| {
            line.contains("\"event\":\"reconnect\"")
                && line.contains(&host)
                && line.contains("\"resumed\":true")
        });
        let tail: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("geodb::pooler"))
            .collect();
        assert!(
            pinned,
            "pooler {name} never pinned to {instance} and resumed; its supervisor said:\n{}",
            tail.join("\n")
        );
    }
}

fn check_failover(report: &DrillReport, synchronous: bool) {
    let fault = report.fault.name();
    assert_ne!(
        report.new_primary, report.old_primary,
        "{fault}: no new primary"
    );
    assert_eq!(
        report.failovers_after,
        report.failovers_before + 1,
        "{fault}: exactly one promotion"
    );
    assert_eq!(
        report.timeline_after,
        report.timeline_before.map(|t| t + 1),
        "{fault}: one new timeline"
    );
    let clean = matches!(
        report.fault,
        Fault::Switchover | Fault::DeletePod | Fault::OperatorKilled
    );
    if synchronous || clean {
        assert!(
            report.missing.is_empty(),
            "{fault}: acknowledged writes lost: {:?}",
            report.missing
        );
    } else if !report.missing.is_empty() {
        // Asynchronous: only the tail in flight to the old primary when it failed may be
        // lost (the replication lag then), and the failover records what it measured.
        assert!(
            report.lost_bytes_reported.is_some(),
            "{fault}: loss not recorded"
        );
        assert!(
            report
                .missing
                .iter()
                .all(|lost| lost.sent_while_old_primary_ran && lost.acked_before_fault_s < 2.0),
            "{fault}: lost writes sent after the old primary stopped or older than the replication lag: {:?}",
            report.missing
        );
    }
}

async fn drills(client: &Client, ns: &str) {
    let target = create(client, ns, &geodatabase("drill", false)).await;
    for (index, fault) in Fault::ALL.into_iter().enumerate() {
        let report = target
            .drill(fault, (index as i64 + 1) * 10_000_000, TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("drill {}: {e:#}", fault.name()));
        check(&report, false);
        if fault == Fault::Switchover {
            assert_pooler_follows(client, ns, "drill", &report.new_primary).await;
        }
    }
    let primary = geodb_e2e::drill::primary_of(
        &geodb_e2e::drill::geodatabase(client, ns, "drill")
            .await
            .unwrap(),
    )
    .unwrap();
    target
        .refused_switchover("drill-7", "SwitchoverTargetMissing", &primary, TIMEOUT)
        .await
        .unwrap();
    // The primary and one replica cut off from everything but each other.
    let partition = geodb_e2e::partition::partial_partition(&target, 60_000_000, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("partial partition: {e:#}"));
    eprintln!("{partition:?}");
    assert!(
        partition.violations.is_empty(),
        "two writable instances: {:?}",
        partition.violations
    );
    assert_ne!(partition.new_primary, partition.old_primary);
    assert!(
        partition.cut_side_acks > 0,
        "the cut-off writer never wrote"
    );
    assert_eq!(
        partition.cut_side_acks_after_promotion, 0,
        "the old primary took writes after the new one was promoted"
    );
    // A rejoin whose pg_rewind fails keeps the data aside and names it.
    let kept = geodb_e2e::kept::rewind_fails(&target, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("failed rewind: {e:#}"));
    eprintln!("failed rewind: {kept}");
    let (left, back, replica) = target.lagging_replica(TIMEOUT).await.unwrap();
    eprintln!("lagging replica {replica}: out of -ro after {left:?}, back {back:?} after resuming");

    let sync = create(client, ns, &geodatabase("sync", true)).await;
    // Cut off, the synchronous primary can acknowledge nothing more; the failover loses
    // nothing that was acknowledged.
    let report = sync
        .drill(Fault::NetworkCut, 90_000_000, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("synchronous drill: {e:#}"));
    check(&report, true);

    // A replica down past the WAL bound clones again, its data kept aside.
    let mut bounded = geodatabase("bounded", false);
    bounded.spec.instances = 2;
    bounded
        .spec
        .postgresql
        .parameters
        .insert("max_slot_wal_keep_size".into(), "64MB".into());
    bounded
        .spec
        .postgresql
        .parameters
        .insert("wal_keep_size".into(), "16MB".into());
    bounded
        .spec
        .postgresql
        .parameters
        .insert("max_wal_size".into(), "96MB".into());
    let bounded = create_with(client, ns, &bounded, 2).await;
    let recloned = geodb_e2e::kept::replica_past_wal_bound(&bounded, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("replica past the WAL bound: {e:#}"));
    eprintln!("replica past the WAL bound: {recloned}");

    // Deleted (volumes kept) after a switchover and created again: same data, same primary.
    let mut kept = geodatabase("recreate", false);
    kept.spec.instances = 2;
    let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &kept).await.unwrap();
    // Then again with nothing recorded on the volumes: their contents choose.
    for forget_record in [false, true] {
        let report = geodb_e2e::recreate::recreate_after_switchover(
            client,
            ns,
            &kept,
            forget_record,
            TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("recreate drill (record forgotten: {forget_record}): {e:#}"));
        eprintln!("{report:?}");
        assert_eq!(report.before.0, 2000, "rows before the recreate");
        assert_eq!(
            report.primary_after, report.primary_before,
            "the recreated GeoDatabase assumed a primary instead of the last one (record forgotten: {forget_record})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_drills() {
    let client = Client::try_default()
        .await
        .expect("KUBECONFIG must point at a cluster with geodb installed");
    let ns = format!("e2e-failover-{}", std::process::id());
    let passed = geodb_e2e::kube_util::run_in_namespace(&client, &ns, |client, ns| async move {
        drills(&client, &ns).await
    })
    .await;
    if !passed {
        let _ = geodb_e2e::drill::operator_failpoint(&client, false).await;
        panic!("failover drills failed (diagnostics above)");
    }
}
