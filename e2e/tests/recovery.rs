//! Backups that restore, on the real cluster with the cluster's S3 server:
//!
//! - `point_in_time_recovery`: a base backup on request (the annotation), rows committed
//!   on either side of a target time, a new GeoDatabase restored to that time holds
//!   exactly the rows before it, answers a PostGIS query, takes its own passwords and
//!   archives to its own path (its new timeline's history file is there); a target
//!   before the first backup is refused with the recoverable range, nothing created;
//!   then a logical dump on request, counted in `status.backups` and restored with the
//!   runbook's commands (`geodb dump-fetch | pg_restore`) into a new database.
//!
//! - `archive_outage_and_failover`: the S3 server unreachable from the pods for 3
//!   minutes under write load: `ContinuousArchiving` turns False and says why, the
//!   primary keeps its segments; after it returns the archive catches up with no gap;
//!   then a failover while archiving: the new timeline's history is archived, and a
//!   restore to the end of the archive (crossing the timeline switch) holds every
//!   acknowledged row.
//!
//! Each runs in a namespace of its own; on failure it prints the namespace's pods, Events
//! and container logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use geodb::api::{GeoDatabase, Phase};
use geodb_e2e::archiving::{ensure_bucket, keys, switch_and_wait, ClusterStore};
use geodb_e2e::conn::{connect, connection_for};
use geodb_e2e::kube_util::wait_for;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};

const READY_TIMEOUT: Duration = Duration::from_secs(600);
const BUCKET: &str = "geodb-e2e-recovery";

fn store_spec(store: &ClusterStore, path: Option<&str>) -> serde_json::Value {
    let mut spec = serde_json::json!({
        "endpoint": store.endpoint, "bucket": BUCKET,
        "credentials": {"secretName": "s3"},
        "ca": {"secretName": "s3", "key": "ca.crt"}});
    if let Some(path) = path {
        spec["path"] = path.into();
    }
    spec
}

async fn wait_ready(api: &Api<GeoDatabase>, name: &str, instances: i32) {
    wait_for(&format!("{name} Ready"), READY_TIMEOUT, || async {
        let s = api.get(name).await.ok()?.status?;
        (s.phase == Some(Phase::Ready) && s.ready_instances == instances).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// The Job of the current backup request has succeeded.
async fn wait_backup_job(client: &Client, ns: &str, cluster: &str) -> String {
    wait_job(client, ns, cluster, "backup").await
}

/// The Job of the current request of `component` (`backup`, `dump`) has succeeded.
async fn wait_job(client: &Client, ns: &str, cluster: &str, component: &str) -> String {
    let jobs = Api::<Job>::namespaced(client.clone(), ns);
    let selector = format!("geodb.io/cluster={cluster},app.kubernetes.io/component={component}");
    wait_for(
        &format!("the requested {component} Job succeeded"),
        READY_TIMEOUT,
        || async {
            let list = jobs
                .list(&ListParams::default().labels(&selector))
                .await
                .ok()?;
            let job = list.items.into_iter().next()?;
            let status = job.status.clone()?;
            assert!(
                status.failed.unwrap_or(0) < 2,
                "{component} Job {} failed: {:?}",
                job.name_any(),
                status.conditions
            );
            (status.succeeded.unwrap_or(0) >= 1).then(|| job.name_any())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

async fn now_utc(sql: &tokio_postgres::Client) -> String {
    sql.query_one(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

async fn insert_rows(sql: &tokio_postgres::Client, ids: std::ops::RangeInclusive<i32>) {
    for id in ids {
        // One transaction each: every row has a commit time of its own.
        sql.execute(
            "INSERT INTO sites (id, geom) VALUES ($1::int, ST_SetSRID(ST_MakePoint($1::int, 45.0), 4326))",
            &[&id],
        )
        .await
        .unwrap();
    }
}

async fn scenario_point_in_time_recovery(client: &Client, ns: &str) {
    let store = ClusterStore::read(client).await.unwrap();
    store.copy_secret(client, ns, "s3").await.unwrap();
    let s3 = store.client();
    ensure_bucket(&s3, BUCKET).await.unwrap();
    let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    let source: GeoDatabase = serde_json::from_value(serde_json::json!({
        "apiVersion": "geodb.io/v1alpha1", "kind": "GeoDatabase",
        "metadata": {"name": "src", "annotations": {"geodb.io/backup-request": "first"}},
        "spec": {"instances": 2, "storage": {"size": "1Gi"}, "pooler": {"enabled": false},
            "backup": {"archiveTimeoutSeconds": 10, "objectStore": store_spec(&store, None)}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &source).await.unwrap();
    wait_ready(&api, "src", 2).await;
    let job = wait_backup_job(client, ns, "src").await;
    let manifests: Vec<String> = keys(&s3, BUCKET, &format!("{ns}/src/backups/"))
        .await
        .unwrap()
        .into_iter()
        .filter(|k| k.ends_with("/backup.json"))
        .collect();
    assert_eq!(
        manifests.len(),
        1,
        "one complete backup after {job}: {manifests:?}"
    );

    let app = connect(&connection_for(client, ns, "src-app-rw", "src-rw").await).await;
    app.batch_execute(
        "CREATE TABLE sites (id int PRIMARY KEY, geom geometry(Point, 4326) NOT NULL, \
         committed timestamptz NOT NULL DEFAULT clock_timestamp())",
    )
    .await
    .unwrap();
    insert_rows(&app, 1..=5).await;
    let target = now_utc(&app).await;
    insert_rows(&app, 6..=10).await;
    eprintln!("recovery target {target}: rows 1-5 before it, 6-10 after");
    // Everything written so far reaches the archive.
    switch_and_wait(
        client,
        ns,
        "src",
        &s3,
        BUCKET,
        &format!("{ns}/src"),
        Duration::from_secs(180),
    )
    .await
    .unwrap_or_else(|e| panic!("archiving: {e:#}"));

    let restored: GeoDatabase = serde_json::from_value(serde_json::json!({
        "apiVersion": "geodb.io/v1alpha1", "kind": "GeoDatabase",
        "metadata": {"name": "restored"},
        "spec": {"instances": 2, "storage": {"size": "1Gi"}, "pooler": {"enabled": false},
            "backup": {"archiveTimeoutSeconds": 10, "objectStore": store_spec(&store, None)},
            "bootstrap": {"recovery": {"source": store_spec(&store, Some(&format!("{ns}/src"))),
                "target": {"time": target}}}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &restored).await.unwrap();
    wait_ready(&api, "restored", 2).await;

    // This cluster's own app password opens it: the restored roles took its Secrets.
    let copy = connect(&connection_for(client, ns, "restored-app-rw", "restored-rw").await).await;
    let ids: Vec<i32> = copy
        .query("SELECT id FROM sites ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        ids,
        (1..=5).collect::<Vec<_>>(),
        "rows committed before {target} only"
    );
    let near: i64 = copy
        .query_one(
            "SELECT count(*) FROM sites WHERE ST_DWithin(geom::geography, \
             ST_SetSRID(ST_MakePoint(3, 45), 4326)::geography, 50000)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // 1° of longitude at 45° N is about 79 km: only the point at 3° E is within 50 km.
    assert_eq!(near, 1, "PostGIS answers on the restored copy");
    // Its promotion (timeline 2) is archived under its own path, not the source's.
    wait_for(
        "the restored cluster's history file in its own archive",
        Duration::from_secs(180),
        || async {
            let own = keys(&s3, BUCKET, &format!("{ns}/restored/wal/"))
                .await
                .ok()?;
            own.iter().any(|k| k.contains(".history")).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    refused_outside_the_range(client, ns, &store).await;
    dump_and_restore_it(client, ns).await;
}

/// A logical dump on request; `status.backups` counts it; the commands of the recovery
/// runbook, run in the primary's pod, restore it into a new database that answers the
/// same PostGIS query.
async fn dump_and_restore_it(client: &Client, ns: &str) {
    let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    let patch = serde_json::json!({
        "metadata": {"annotations": {"geodb.io/dump-request": "first"}},
        "spec": {"backup": {"dumps": {"keep": 3}}}});
    api.patch("src", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let job = wait_job(client, ns, "src", "dump").await;
    let last_dump = wait_for("status.backups.lastDump", READY_TIMEOUT, || async {
        let backups = api.get("src").await.ok()?.status?.backups?;
        (backups.dumps == Some(1)).then_some(backups.last_dump?)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("dump {last_dump} by {job}");
    let primary = api
        .get("src")
        .await
        .unwrap()
        .status
        .and_then(|s| s.current_primary)
        .unwrap();
    let script = "geodb dump-list && \
        geodb dump-fetch --database app > /tmp/app.dump && \
        createdb restored_from_dump && \
        pg_restore --exit-on-error --dbname=restored_from_dump /tmp/app.dump && \
        psql -XAt -d restored_from_dump -c \"SELECT count(*) FROM sites WHERE \
          ST_DWithin(geom::geography, ST_SetSRID(ST_MakePoint(3, 45), 4326)::geography, 50000)\" && \
        psql -XAt -d restored_from_dump -c 'SELECT count(*) FROM sites'";
    let out = std::process::Command::new("kubectl")
        .args([
            "exec",
            "-n",
            ns,
            &format!("{primary}-0"),
            "-c",
            "postgres",
            "--",
        ])
        .args(["sh", "-c", script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the runbook's restore: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].contains(&last_dump), "dump-list: {stdout}");
    // The source holds all ten rows; one of them is within 50 km of (3, 45).
    assert_eq!(lines[lines.len() - 2..], ["1", "10"], "{stdout}");
}

/// A target before the first backup: Degraded with the range, no StatefulSet made.
async fn refused_outside_the_range(client: &Client, ns: &str, store: &ClusterStore) {
    let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    let early: GeoDatabase = serde_json::from_value(serde_json::json!({
        "apiVersion": "geodb.io/v1alpha1", "kind": "GeoDatabase",
        "metadata": {"name": "early"},
        "spec": {"instances": 1, "storage": {"size": "1Gi"}, "pooler": {"enabled": false},
            "bootstrap": {"recovery": {"source": store_spec(store, Some(&format!("{ns}/src"))),
                "target": {"time": "2001-01-01T00:00:00Z"}}}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &early).await.unwrap();
    let message = wait_for("early Degraded", Duration::from_secs(120), || async {
        let s = api.get("early").await.ok()?.status?;
        let c = s.conditions.into_iter().find(|c| c.type_ == "Degraded")?;
        (c.status == "True").then_some(c.message)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        message.contains("bootstrap.recovery.target") && message.contains("recoverable"),
        "the refusal names the field and the range: {message}"
    );
    let sets = Api::<StatefulSet>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("geodb.io/cluster=early"))
        .await
        .unwrap();
    assert!(
        sets.items.is_empty(),
        "nothing is created for a refused recovery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_in_time_recovery() {
    let client = Client::try_default()
        .await
        .expect("KUBECONFIG must point at a cluster with geodb installed");
    let ns = format!("e2e-recovery-{}", std::process::id());
    let passed = geodb_e2e::kube_util::run_in_namespace(&client, &ns, |client, ns| async move {
        scenario_point_in_time_recovery(&client, &ns).await;
    })
    .await;
    assert!(
        passed,
        "scenario point_in_time_recovery failed (diagnostics above)"
    );
}

async fn scenario_archive_outage_and_failover(client: &Client, ns: &str) {
    use geodb_e2e::outage::{archived_wal, missing_after_restore, outage_then_failover};
    let store = ClusterStore::read(client).await.unwrap();
    store.copy_secret(client, ns, "s3").await.unwrap();
    let s3 = store.client();
    ensure_bucket(&s3, BUCKET).await.unwrap();
    let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    let source: GeoDatabase = serde_json::from_value(serde_json::json!({
        "apiVersion": "geodb.io/v1alpha1", "kind": "GeoDatabase",
        "metadata": {"name": "busy", "annotations": {"geodb.io/backup-request": "first"}},
        "spec": {"instances": 2, "storage": {"size": "1Gi"}, "pooler": {"enabled": false},
            "replication": {"failoverDelaySeconds": 5},
            "backup": {"archiveTimeoutSeconds": 10, "objectStore": store_spec(&store, None)}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &source).await.unwrap();
    wait_ready(&api, "busy", 2).await;
    wait_backup_job(client, ns, "busy").await;
    let (report, acks) =
        outage_then_failover(client, ns, "busy", "writes", Duration::from_secs(180))
            .await
            .unwrap_or_else(|e| panic!("outage drill: {e:#}"));
    eprintln!("outage drill: {report:?}");
    assert_eq!(
        report.failing_reason, "ArchiveFailing",
        "{}",
        report.failing_message
    );
    assert!(
        report.waiting_during_outage > 0 && report.failures_during_outage > 0,
        "the primary keeps the unarchived segments: {report:?}"
    );
    let (wal, gaps) = archived_wal(&s3, BUCKET, &format!("{ns}/busy"))
        .await
        .unwrap();
    assert!(
        gaps.is_empty(),
        "segments missing from the archive at {gaps:?}: {wal:?}"
    );
    assert!(
        wal.iter().any(|k| k.contains("00000002.history")),
        "the new timeline's history is archived: {wal:?}"
    );

    let latest: GeoDatabase = serde_json::from_value(serde_json::json!({
        "apiVersion": "geodb.io/v1alpha1", "kind": "GeoDatabase",
        "metadata": {"name": "latest"},
        "spec": {"instances": 1, "storage": {"size": "1Gi"}, "pooler": {"enabled": false},
            "bootstrap": {"recovery": {"source": store_spec(&store, Some(&format!("{ns}/busy"))),
                "target": {"latest": true}}}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &latest).await.unwrap();
    wait_ready(&api, "latest", 1).await;
    let missing = missing_after_restore(client, ns, "latest", "writes", &acks)
        .await
        .unwrap();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged rows missing after a restore to latest: {missing:?}",
        missing.len(),
        acks.len()
    );
    // The replay followed the source onto timeline 2; its own promotion made timeline 3.
    wait_for(
        "the restored primary on timeline 3",
        Duration::from_secs(120),
        || async {
            let timeline = api.get("latest").await.ok()?.status?.timeline?;
            (timeline >= 3).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_outage_and_failover() {
    let client = Client::try_default()
        .await
        .expect("KUBECONFIG must point at a cluster with geodb installed");
    let ns = format!("e2e-outage-{}", std::process::id());
    let passed = geodb_e2e::kube_util::run_in_namespace(&client, &ns, |client, ns| async move {
        scenario_archive_outage_and_failover(&client, &ns).await;
    })
    .await;
    assert!(
        passed,
        "scenario archive_outage_and_failover failed (diagnostics above)"
    );
}
