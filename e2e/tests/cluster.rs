//! End-to-end suite against a real cluster (whatever `KUBECONFIG` points at) where the
//! operator and the images are installed (`make e2e` does both on the local cluster).
//! Each scenario runs in a namespace of its own; on failure it prints the namespace's
//! pods, Events and container logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use geodb::api::{GeoDatabase, Phase};
use geodb_e2e::conn::{connect, connection_for};
use geodb_e2e::kube_util::{repo_root, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};

#[path = "cluster/maintenance.rs"]
mod maintenance;
#[path = "cluster/migrations.rs"]
mod migrations;
#[path = "cluster/monitoring.rs"]
mod monitoring;
#[path = "cluster/pooler.rs"]
mod pooler;
#[path = "cluster/postgis.rs"]
mod postgis;
#[path = "cluster/tls.rs"]
mod tls;

const READY_TIMEOUT: Duration = Duration::from_secs(600);

async fn scenario_postgis_cluster(client: &Client, ns: &str) {
    let text =
        std::fs::read_to_string(repo_root().join("config/samples/geodatabase.yaml")).unwrap();
    let db: GeoDatabase = serde_yaml::from_str(&text).unwrap();
    let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &db).await.unwrap();
    wait_for(
        "GeoDatabase geo Ready with 3 ready instances",
        READY_TIMEOUT,
        || async {
            let db = api.get("geo").await.ok()?;
            let status = db.status?;
            (status.phase == Some(Phase::Ready) && status.ready_instances == 3).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // Pods run as non-root with the RuntimeDefault seccomp profile.
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("geodb.io/cluster=geo"))
        .await
        .unwrap();
    assert_eq!(
        pods.items.len(),
        5,
        "3 instances, a read-write and a read-only pooler"
    );
    for pod in &pods {
        let sc = pod.spec.as_ref().unwrap().security_context.clone().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true), "{}", pod.name_any());
        assert_ne!(sc.run_as_user, Some(0), "{}", pod.name_any());
        assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    }

    // Through the read-write Service.
    let rw = connect(&connection_for(client, ns, "geo-app-rw", "geo-rw").await).await;
    let version: String = rw
        .query_one("SELECT postgis_full_version()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(version.starts_with("POSTGIS="), "{version}");
    rw.batch_execute(
        "CREATE TABLE places (id int PRIMARY KEY, name text NOT NULL, geom geometry(Point, 4326) NOT NULL);
         INSERT INTO places VALUES
           (1, 'Hoan Kiem Lake', ST_SetSRID(ST_MakePoint(105.8522, 21.0287), 4326)),
           (2, 'Temple of Literature', ST_SetSRID(ST_MakePoint(105.8355, 21.0293), 4326)),
           (3, 'Ben Thanh Market', ST_SetSRID(ST_MakePoint(106.6981, 10.7725), 4326));",
    )
    .await
    .unwrap();
    let rows = rw
        .query("SELECT name FROM places ORDER BY id", &[])
        .await
        .unwrap();
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        names,
        ["Hoan Kiem Lake", "Temple of Literature", "Ben Thanh Market"]
    );
    // Within 2 km of Hoan Kiem Lake (geography distance in metres): the temple, not Saigon.
    let near: Vec<String> = rw
        .query(
            "SELECT name FROM places WHERE ST_DWithin(geom::geography,
               ST_SetSRID(ST_MakePoint(105.8522, 21.0287), 4326)::geography, 2000) ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(near, ["Hoan Kiem Lake", "Temple of Literature"]);
    let column_type: String = rw
        .query_one("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'places'::regclass AND attname = 'geom'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(column_type, "geometry(Point,4326)");

    // Through PgBouncer in transaction mode (simple protocol: no named prepared statements).
    let pooled = connect(&connection_for(client, ns, "geo-app-pooler", "geo-pooler").await).await;
    let messages = pooled
        .simple_query("SELECT count(*) FROM places WHERE ST_DWithin(geom::geography, ST_SetSRID(ST_MakePoint(105.8522, 21.0287), 4326)::geography, 2000)")
        .await
        .unwrap();
    let count = messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(count.as_deref(), Some("2"));

    // The read-only pooler reaches a replica, which has the rows once it replays them.
    let readonly =
        connect(&connection_for(client, ns, "geo-app-pooler-ro", "geo-pooler-ro").await).await;
    let answer = |messages: Vec<tokio_postgres::SimpleQueryMessage>| {
        messages.into_iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
    };
    let in_recovery = answer(
        readonly
            .simple_query("SELECT pg_is_in_recovery()")
            .await
            .unwrap(),
    );
    assert_eq!(
        in_recovery.as_deref(),
        Some("t"),
        "the read-only pooler must reach a replica"
    );
    wait_for(
        "the rows on the replica behind the read-only pooler",
        Duration::from_secs(30),
        || async {
            let rows = answer(
                readonly
                    .simple_query("SELECT count(*) FROM places")
                    .await
                    .ok()?,
            );
            (rows.as_deref() == Some("3")).then_some(())
        },
    )
    .await
    .unwrap();
}

/// The uid of each instance pod, by pod name.
async fn instance_pods(client: &Client, ns: &str) -> Vec<(String, String, bool)> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(
            &ListParams::default()
                .labels("geodb.io/cluster=geo,app.kubernetes.io/component=database"),
        )
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let mut out: Vec<(String, String, bool)> = pods
        .iter()
        .map(|p| {
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            (
                p.name_any(),
                p.metadata.uid.clone().unwrap_or_default(),
                ready && p.metadata.deletion_timestamp.is_none(),
            )
        })
        .collect();
    out.sort();
    out
}

/// `SHOW setting` on every instance pod (superuser, by pod IP).
async fn shown_everywhere(client: &Client, ns: &str, setting: &str) -> Vec<String> {
    let password = geodb_e2e::drill::superuser_password(client, ns, "geo")
        .await
        .unwrap();
    let mut values = Vec::new();
    for (pod, _, _) in instance_pods(client, ns).await {
        let value = async {
            let ip = geodb_e2e::drill::pod_ip(client, ns, &pod).await.ok()?;
            let sql = geodb_e2e::drill::superuser(&ip, &password).await.ok()?;
            let row = sql.query_one(&format!("SHOW {setting}"), &[]).await.ok()?;
            Some(row.get::<_, String>(0))
        };
        values.push(value.await.unwrap_or_default());
    }
    values
}

async fn set_parameters(client: &Client, ns: &str, parameters: serde_json::Value) {
    Api::<GeoDatabase>::namespaced(client.clone(), ns)
        .patch(
            "geo",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                serde_json::json!({"spec": {"postgresql": {"parameters": parameters}}}),
            ),
        )
        .await
        .unwrap();
}

/// A setting PostgreSQL reloads takes effect everywhere with no pod restarted; one that
/// needs a restart rolls every pod, one at a time.
async fn scenario_reload_and_restart(client: &Client, ns: &str) {
    let before = instance_pods(client, ns).await;
    assert_eq!(before.len(), 3);
    set_parameters(client, ns, serde_json::json!({"work_mem": "24MB"})).await;
    wait_for(
        "work_mem 24MB on every instance",
        Duration::from_secs(240),
        || async {
            let shown = shown_everywhere(client, ns, "work_mem").await;
            shown.iter().all(|v| v == "24MB").then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let uids =
        |pods: &[(String, String, bool)]| pods.iter().map(|p| p.1.clone()).collect::<Vec<_>>();
    assert_eq!(
        uids(&instance_pods(client, ns).await),
        uids(&before),
        "a reload restarted pods"
    );

    // max_connections lowered too: a standby may not run it below its primary, and the
    // replicas roll first.
    set_parameters(
        client,
        ns,
        serde_json::json!({"shared_buffers": "48MB", "max_connections": "95"}),
    )
    .await;
    let most_down = std::sync::atomic::AtomicUsize::new(0);
    wait_for(
        "every pod restarted with shared_buffers 48MB and max_connections 95",
        Duration::from_secs(900),
        || async {
            let pods = instance_pods(client, ns).await;
            let down = 3usize.saturating_sub(pods.iter().filter(|p| p.2).count());
            most_down.fetch_max(down, std::sync::atomic::Ordering::Relaxed);
            let restarted =
                pods.len() == 3 && pods.iter().all(|p| !uids(&before).contains(&p.1) && p.2);
            if !restarted {
                return None;
            }
            let buffers = shown_everywhere(client, ns, "shared_buffers").await;
            let connections = shown_everywhere(client, ns, "max_connections").await;
            (buffers.iter().all(|v| v == "48MB") && connections.iter().all(|v| v == "95"))
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let most = most_down.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        most <= 1,
        "{most} instances were down at once during the rollout"
    );
}

/// Each instance pod's uid and its containers' restarts, by pod name.
async fn incarnations(client: &Client, ns: &str) -> Vec<(String, String, i32)> {
    geodb_e2e::kube_util::incarnations(
        client,
        ns,
        "geodb.io/cluster=geo,app.kubernetes.io/component=database",
    )
    .await
}

/// `helm upgrade` of the operator's release (a change that rolls the operator's pods)
/// with a GeoDatabase running: once the new operator has reconciled it (a spec change it
/// applies), no PostgreSQL pod was replaced or restarted.
async fn scenario_chart_upgrade(client: &Client, ns: &str) {
    let before = incarnations(client, ns).await;
    assert_eq!(before.len(), 3, "{before:?}");
    let deployments =
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), "geodb-system");
    let generation = deployments
        .get("geodb-operator")
        .await
        .unwrap()
        .metadata
        .generation;
    let stamp = std::process::id().to_string();
    let out = std::process::Command::new(geodb_e2e::kube_util::helm_binary())
        .args([
            "upgrade",
            "geodb",
            "charts/geodb",
            "--namespace",
            "geodb-system",
        ])
        .args([
            "--reuse-values",
            "--wait",
            "--timeout",
            "300s",
            "--set-string",
        ])
        .arg(format!("podAnnotations.example\\.com/upgraded={stamp}"))
        .current_dir(geodb_e2e::kube_util::repo_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm upgrade: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "the operator's new pods",
        Duration::from_secs(300),
        || async {
            let d = deployments.get("geodb-operator").await.ok()?;
            let s = d.status?;
            let want = d.spec?.replicas.unwrap_or(1);
            (d.metadata.generation > generation
                && s.observed_generation == d.metadata.generation
                && s.updated_replicas == Some(want)
                && s.available_replicas == Some(want)
                && s.replicas == Some(want))
            .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    set_parameters(client, ns, serde_json::json!({"work_mem": "32MB"})).await;
    let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    wait_for(
        "the new operator to apply work_mem 32MB",
        Duration::from_secs(240),
        || async {
            let db = api.get("geo").await.ok()?;
            let s = db.status.clone()?;
            let shown = shown_everywhere(client, ns, "work_mem").await;
            (s.observed_generation == db.metadata.generation
                && s.phase == Some(Phase::Ready)
                && shown.iter().all(|v| v == "32MB"))
            .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        incarnations(client, ns).await,
        before,
        "the upgrade replaced or restarted PostgreSQL pods"
    );
}

/// WAL archiving to the cluster's S3 server: switched-out segments reach the bucket and
/// `ContinuousArchiving` says so.
async fn scenario_archiving(client: &Client, ns: &str) {
    use geodb_e2e::archiving::{ensure_bucket, switch_and_wait, ClusterStore};
    let store = ClusterStore::read(client).await.unwrap();
    store.copy_secret(client, ns, "s3").await.unwrap();
    let s3 = store.client();
    let bucket = "geodb-e2e";
    ensure_bucket(&s3, bucket).await.unwrap();
    let db: GeoDatabase = serde_json::from_value(serde_json::json!({
        "apiVersion": "geodb.io/v1alpha1", "kind": "GeoDatabase",
        "metadata": {"name": "arch"},
        "spec": {"instances": 2, "storage": {"size": "1Gi"}, "pooler": {"enabled": false},
            "backup": {"archiveTimeoutSeconds": 10, "objectStore": {
                "endpoint": store.endpoint, "bucket": bucket,
                "credentials": {"secretName": "s3"},
                "ca": {"secretName": "s3", "key": "ca.crt"}}}}
    }))
    .unwrap();
    let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &db).await.unwrap();
    wait_for("arch Ready", READY_TIMEOUT, || async {
        let s = api.get("arch").await.ok()?.status?;
        (s.phase == Some(Phase::Ready) && s.ready_instances == 2).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let archived = switch_and_wait(
        client,
        ns,
        "arch",
        &s3,
        bucket,
        &format!("{ns}/arch"),
        Duration::from_secs(120),
    )
    .await
    .unwrap_or_else(|e| panic!("archiving: {e:#}"));
    eprintln!("archived: {archived:?}");
    assert!(
        archived.segments.iter().all(|k| k.ends_with(".zst")
            || k.ends_with(".history")
            || k.ends_with(".backup")
            || k.ends_with(".partial")),
        "uncompressed or unknown objects: {:?}",
        archived.segments
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_suite() {
    let client = Client::try_default()
        .await
        .expect("KUBECONFIG must point at a cluster with geodb installed");
    let ns = format!("e2e-postgis-{}", std::process::id());
    let passed = geodb_e2e::kube_util::run_in_namespace(&client, &ns, |client, ns| async move {
        scenario_postgis_cluster(&client, &ns).await;
        postgis::scenario_postgis_extensions(&client, &ns).await;
        postgis::scenario_extension_update(&client, &ns).await;
        migrations::scenario_migrations(&client, &ns).await;
        migrations::scenario_seed(&client, &ns).await;
        migrations::scenario_migrations_image(&client, &ns).await;
        maintenance::scenario_vacuum(&client, &ns).await;
        tls::scenario_tls(&client, &ns).await;
        tls::scenario_provided_tls(&client, &ns).await;
        pooler::scenario_pooler_reload(&client, &ns).await;
        pooler::scenario_pooler_roles(&client, &ns).await;
        pooler::scenario_pooler_load(&client, &ns).await;
        pooler::scenario_pooler_prepared(&client, &ns).await;
        pooler::scenario_pooler_pod_deleted(&client, &ns).await;
        scenario_archiving(&client, &ns).await;
        scenario_reload_and_restart(&client, &ns).await;
        scenario_chart_upgrade(&client, &ns).await;
    })
    .await;
    assert!(
        passed,
        "scenario postgis_cluster failed (diagnostics above)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_suite() {
    let client = Client::try_default()
        .await
        .expect("KUBECONFIG must point at a cluster with geodb installed");
    let ns = format!("e2e-monitoring-{}", std::process::id());
    let passed = geodb_e2e::kube_util::run_in_namespace(&client, &ns, |client, ns| async move {
        monitoring::scenario_monitoring(&client, &ns).await;
    })
    .await;
    assert!(passed, "scenario monitoring failed (diagnostics above)");
}
