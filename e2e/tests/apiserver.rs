//! The operator against a real kube-apiserver (etcd, kube-apiserver and
//! kube-controller-manager as local processes), running in-process as a user that has
//! only the operator's own RBAC.
//!
//! Every scenario is a test of its own (`cargo test -p geodb-e2e --test apiserver
//! deletion_policy` runs one); one control plane and one operator, started by the first,
//! serve them all. Each scenario has its own namespace, and a failing scenario prints that
//! namespace's objects, Events and the components' logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use geodb::api::{GeoDatabase, Phase, Role};
use geodb::runtime::leader::LeaderElection;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, Node, PersistentVolume, PersistentVolumeClaim, Pod, ResourceQuota, Secret, Service,
    Toleration,
};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const CONVERGE: Duration = Duration::from_secs(60);

fn sample() -> GeoDatabase {
    let text =
        std::fs::read_to_string(repo_root().join("config/samples/geodatabase.yaml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn secret_text(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

async fn create_db(client: &Client, namespace: &str, db: &GeoDatabase) -> GeoDatabase {
    Api::<GeoDatabase>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), db)
        .await
        .unwrap_or_else(|e| panic!("creating GeoDatabase {}: {e}", db.name_any()))
}

async fn patch_spec(client: &Client, namespace: &str, name: &str, spec: serde_json::Value) {
    Api::<GeoDatabase>::namespaced(client.clone(), namespace)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .unwrap();
}

async fn geodb(client: &Client, namespace: &str, name: &str) -> GeoDatabase {
    get::<GeoDatabase>(client, namespace, name).await.unwrap()
}

/// Wait until the status describes the current generation with every instance's pod.
async fn wait_converged(
    client: &Client,
    namespace: &str,
    name: &str,
    instances: usize,
) -> GeoDatabase {
    wait_for(
        &format!("{namespace}/{name} to converge with {instances} instances"),
        CONVERGE,
        || async {
            let db = get::<GeoDatabase>(client, namespace, name).await?;
            let status = db.status.as_ref()?;
            (status.observed_generation == db.metadata.generation
                && status.phase == Some(Phase::Creating)
                && status.instances.len() == instances
                && status.instances.iter().all(|i| i.pod.is_some()))
            .then_some(db.clone())
        },
    )
    .await
}

async fn scenario_creates_every_object(client: &Client, op: &Operator, ns: &str) {
    create_db(client, ns, &sample()).await;
    let db = wait_converged(client, ns, "geo", 3).await;
    let cluster = "geodb.io/cluster=geo";

    assert_eq!(
        names::<StatefulSet>(client, ns, cluster).await,
        ["geo-1", "geo-2", "geo-3"]
    );
    assert_eq!(
        names::<Service>(client, ns, cluster).await,
        [
            "geo-1",
            "geo-2",
            "geo-3",
            "geo-metrics",
            "geo-pooler",
            "geo-pooler-ro",
            "geo-ro",
            "geo-rw"
        ]
    );
    assert_eq!(
        names::<ConfigMap>(client, ns, cluster).await,
        ["geo-config", "geo-pooler", "geo-pooler-ro"]
    );
    assert_eq!(
        names::<Secret>(client, ns, cluster).await,
        [
            "geo-app",
            "geo-app-pooler",
            "geo-app-pooler-ro",
            "geo-app-ro",
            "geo-app-rw",
            "geo-ca",
            "geo-pooler-auth",
            "geo-pooler-login",
            "geo-replication",
            "geo-server-tls",
            "geo-superuser"
        ]
    );
    assert_eq!(
        names::<Deployment>(client, ns, cluster).await,
        ["geo-pooler", "geo-pooler-ro"]
    );
    // Only the cluster's pods, the operator and this namespace's pods get in.
    let policy = get::<k8s_openapi::api::networking::v1::NetworkPolicy>(client, ns, "geo-network")
        .await
        .expect("the NetworkPolicy geo-network");
    let policy = policy.spec.unwrap();
    assert_eq!(
        policy.pod_selector.unwrap().match_labels.unwrap()["geodb.io/cluster"],
        "geo"
    );
    assert_eq!(policy.ingress.unwrap().len(), 2);
    assert_eq!(
        names::<PodDisruptionBudget>(client, ns, cluster).await,
        ["geo-pooler", "geo-pooler-ro", "geo-primary", "geo-replicas"]
    );
    // The instance pods' identity: bound in this namespace to the ClusterRole that reads
    // GeoDatabases, and to nothing else.
    let binding = get::<k8s_openapi::api::rbac::v1::RoleBinding>(client, ns, "geo-instance")
        .await
        .unwrap();
    assert_eq!(
        (
            binding.role_ref.kind.as_str(),
            binding.role_ref.name.as_str()
        ),
        ("ClusterRole", "geodb-instance")
    );
    let instance_user = format!("system:serviceaccount:{ns}:geo-instance");
    for (namespace, verb, group, resource, name, allowed) in [
        (ns, "get", "geodb.io", "geodatabases", "geo", true),
        (ns, "patch", "geodb.io", "geodatabases", "geo", false),
        (ns, "get", "", "secrets", "geo-superuser", false),
        (ns, "create", "events.k8s.io", "events", "", true),
        (ns, "delete", "events.k8s.io", "events", "", false),
        (
            ns,
            "update",
            "coordination.k8s.io",
            "leases",
            "geo-primary",
            true,
        ),
        (
            ns,
            "delete",
            "coordination.k8s.io",
            "leases",
            "geo-primary",
            false,
        ),
        ("default", "get", "geodb.io", "geodatabases", "geo", false),
    ] {
        let access = Access {
            namespace,
            verb,
            group,
            resource,
            name,
        };
        assert_eq!(
            may(client, &instance_user, &access).await,
            allowed,
            "{instance_user}: {access:?}"
        );
    }

    // Owner references and server-side apply under one field manager.
    let sts = get::<StatefulSet>(client, ns, "geo-2").await.unwrap();
    let owner = &sts.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("GeoDatabase", db.uid().unwrap().as_str())
    );
    assert!(sts
        .managed_fields()
        .iter()
        .any(|m| m.manager.as_deref() == Some("geodb-operator")
            && m.operation.as_deref() == Some("Apply")));
    let pod_spec = sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let security = pod_spec.security_context.as_ref().unwrap();
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(
        security.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    assert_eq!(
        pod_spec.containers[0].image.as_deref(),
        Some(geodb::api::DEFAULT_IMAGE)
    );

    // Configuration from the spec.
    let config = get::<ConfigMap>(client, ns, "geo-config").await.unwrap();
    let conf = &config.data.as_ref().unwrap()["postgresql.conf"];
    assert!(conf.contains("work_mem = '16MB'"), "{conf}");
    let ini = &get::<ConfigMap>(client, ns, "geo-pooler")
        .await
        .unwrap()
        .data
        .unwrap()["pgbouncer.ini"];
    assert!(ini.contains("pool_mode = transaction"), "{ini}");
    assert!(ini.contains("max_client_conn = 200"), "{ini}");

    // Connection Secrets carry the generated application password.
    let app = get::<Secret>(client, ns, "geo-app").await.unwrap();
    let password = secret_text(&app, "password");
    assert_eq!(password.len(), 32);
    let rw = get::<Secret>(client, ns, "geo-app-rw").await.unwrap();
    assert_eq!(secret_text(&rw, "host"), format!("geo-rw.{ns}.svc"));
    assert_eq!(secret_text(&rw, "password"), password);
    assert_eq!(
        secret_text(&rw, "uri"),
        format!("postgresql://app:{password}@geo-rw.{ns}.svc:5432/app?sslmode=require")
    );
    // ... and what a client needs to verify the server: the cluster's CA.
    assert_eq!(secret_text(&rw, "sslmode"), "verify-full");
    let ca = get::<Secret>(client, ns, "geo-ca").await.unwrap();
    assert_eq!(secret_text(&rw, "ca.crt"), secret_text(&ca, "ca.crt"));
    assert!(ini.contains("client_tls_sslmode = require"), "{ini}");
    assert!(ini.contains("server_tls_sslmode = verify-full"), "{ini}");
    assert!(conf.contains("ssl = 'on'"), "{conf}");
    let pooled = get::<Secret>(client, ns, "geo-app-pooler").await.unwrap();
    assert_eq!(secret_text(&pooled, "port"), "6432");

    // Status, and roles on the pods the StatefulSet controller created.
    let status = db.status.clone().unwrap();
    assert_eq!(status.current_primary.as_deref(), Some("geo-1"));
    assert_eq!(status.ready_instances, 0);
    assert_eq!(status.instances[0].role, Role::Primary);
    assert_eq!(status.secrets.as_ref().unwrap().app_rw, "geo-app-rw");
    assert_eq!(status.services.as_ref().unwrap().ro, "geo-ro");
    let condition = |t: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
            .clone()
    };
    assert_eq!(condition("Ready").status, "False");
    assert_eq!(
        condition("Ready").message,
        "0/3 instances ready, pooler not ready"
    );
    assert_eq!(condition("Progressing").status, "True");
    assert_eq!(condition("Degraded").status, "False");
    wait_for("pods labelled with their roles", CONVERGE, || async {
        let primary = names::<Pod>(client, ns, "geodb.io/cluster=geo,geodb.io/role=primary").await;
        let replicas = names::<Pod>(client, ns, "geodb.io/cluster=geo,geodb.io/role=replica").await;
        (primary == ["geo-1-0"] && replicas == ["geo-2-0", "geo-3-0"]).then_some(())
    })
    .await;

    // `kubectl get geodb` columns, as the API server renders them.
    let table: serde_json::Value = client
        .request(
            http::Request::get(format!(
                "/apis/geodb.io/v1alpha1/namespaces/{ns}/geodatabases"
            ))
            .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
            .body(Vec::new())
            .unwrap(),
        )
        .await
        .unwrap();
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        ["Name", "Phase", "Primary", "Ready", "Instances", "Age"]
    );
    let cells = &table["rows"][0]["cells"];
    assert_eq!(
        (cells[1].as_str(), cells[2].as_str(), cells[4].as_i64()),
        (Some("Creating"), Some("geo-1"), Some(3))
    );

    // Events name what was done.
    let events = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let reasons: Vec<String> = events.iter().filter_map(|e| e.reason.clone()).collect();
    assert!(reasons.contains(&"Created".to_owned()), "{reasons:?}");
    assert!(
        reasons.contains(&"CredentialsCreated".to_owned()),
        "{reasons:?}"
    );

    // A reconcile may finish converging; the one after it must not write at all.
    op.reconcile(geodb(client, ns, "geo").await).await;
    let before = op.metrics.kube_writes();
    op.reconcile(geodb(client, ns, "geo").await).await;
    op.reconcile(geodb(client, ns, "geo").await).await;
    assert_eq!(
        op.metrics.kube_writes() - before,
        0,
        "a steady-state reconcile wrote to the API"
    );
}

async fn scenario_spec_changes_converge(client: &Client, ns: &str) {
    let mut db = sample();
    db.spec.deletion_policy = geodb::api::DeletionPolicy::Retain;
    create_db(client, ns, &db).await;
    wait_converged(client, ns, "geo", 3).await;
    let password = secret_text(
        &get::<Secret>(client, ns, "geo-app").await.unwrap(),
        "password",
    );
    let hash_of = |sts: StatefulSet| {
        sts.spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()["geodb.io/config-hash"]
            .clone()
    };
    let old_hash = hash_of(get::<StatefulSet>(client, ns, "geo-1").await.unwrap());

    // A setting PostgreSQL reloads: the ConfigMap is rewritten, the pod template is not
    // (no pod rolls; the agent reloads).
    patch_spec(
        client,
        ns,
        "geo",
        json!({"postgresql": {"parameters": {"work_mem": "32MB", "max_connections": "100"}}}),
    )
    .await;
    wait_for("work_mem 32MB in the ConfigMap", CONVERGE, || async {
        let cm = get::<ConfigMap>(client, ns, "geo-config").await?;
        cm.data?["postgresql.conf"]
            .contains("work_mem = '32MB'")
            .then_some(())
    })
    .await;
    let sts = get::<StatefulSet>(client, ns, "geo-1").await.unwrap();
    assert_eq!(
        hash_of(sts),
        old_hash,
        "a reloadable setting changed the pod template"
    );
    // One that needs a restart: the pod template hash moves (pods roll).
    patch_spec(
        client,
        ns,
        "geo",
        json!({"postgresql": {"parameters": {"shared_buffers": "64MB"}}}),
    )
    .await;
    wait_for(
        "shared_buffers 64MB in the ConfigMap and a new config hash",
        CONVERGE,
        || async {
            let cm = get::<ConfigMap>(client, ns, "geo-config").await?;
            let sts = get::<StatefulSet>(client, ns, "geo-1").await?;
            (cm.data?["postgresql.conf"].contains("shared_buffers = '64MB'")
                && hash_of(sts) != old_hash)
                .then_some(())
        },
    )
    .await;

    // Scale down: the highest replica goes, its volume stays (Retain).
    wait_for("PVC of geo-3 to exist", CONVERGE, || async {
        get::<PersistentVolumeClaim>(client, ns, "pgdata-geo-3-0").await
    })
    .await;
    patch_spec(client, ns, "geo", json!({"instances": 2})).await;
    wait_for(
        "geo-3 StatefulSet and Service removed",
        CONVERGE,
        || async {
            let sts = names::<StatefulSet>(client, ns, "geodb.io/cluster=geo").await;
            let svc = get::<Service>(client, ns, "geo-3").await;
            (sts == ["geo-1", "geo-2"] && svc.is_none()).then_some(())
        },
    )
    .await;
    wait_converged(client, ns, "geo", 2).await;
    assert!(
        get::<PersistentVolumeClaim>(client, ns, "pgdata-geo-3-0")
            .await
            .is_some(),
        "scale-down deleted a PVC under deletionPolicy Retain"
    );

    // Pooler off: every pooler object goes, nothing else.
    patch_spec(client, ns, "geo", json!({"pooler": {"enabled": false}})).await;
    wait_for("pooler objects removed", CONVERGE, || async {
        let gone = get::<Deployment>(client, ns, "geo-pooler").await.is_none()
            && get::<Service>(client, ns, "geo-pooler").await.is_none()
            && get::<ConfigMap>(client, ns, "geo-pooler").await.is_none()
            && get::<Secret>(client, ns, "geo-pooler-auth").await.is_none()
            && get::<Secret>(client, ns, "geo-app-pooler").await.is_none()
            && get::<Deployment>(client, ns, "geo-pooler-ro")
                .await
                .is_none()
            && get::<Service>(client, ns, "geo-pooler-ro").await.is_none()
            && get::<Secret>(client, ns, "geo-app-pooler-ro")
                .await
                .is_none()
            && get::<PodDisruptionBudget>(client, ns, "geo-pooler")
                .await
                .is_none()
            && get::<PodDisruptionBudget>(client, ns, "geo-pooler-ro")
                .await
                .is_none();
        gone.then_some(())
    })
    .await;

    // Scale up again and grow storage: the StatefulSets are recreated, PVCs grow.
    patch_spec(
        client,
        ns,
        "geo",
        json!({"instances": 3, "storage": {"size": "2Gi"}}),
    )
    .await;
    wait_for("3 StatefulSets claiming 2Gi", CONVERGE, || async {
        let api = Api::<StatefulSet>::namespaced(client.clone(), ns);
        let list = api
            .list(&ListParams::default().labels("geodb.io/cluster=geo"))
            .await
            .ok()?;
        let sizes: Vec<_> = list
            .iter()
            .filter(|s| s.metadata.deletion_timestamp.is_none())
            .filter_map(|s| geodb::builders::instance::claimed_size(s).map(str::to_owned))
            .collect();
        (sizes == ["2Gi", "2Gi", "2Gi"]).then_some(())
    })
    .await;
    // No provisioner runs here, so claims stay unbound, and an unbound claim cannot be
    // resized: the operator leaves it alone (it grows it once bound).
    let pvc = get::<PersistentVolumeClaim>(client, ns, "pgdata-geo-1-0")
        .await
        .unwrap();
    assert_eq!(
        pvc.spec.unwrap().resources.unwrap().requests.unwrap()["storage"].0,
        "1Gi"
    );
    wait_converged(client, ns, "geo", 3).await;

    // Credentials never rotate; a deleted connection Secret comes back with the same password.
    Api::<Secret>::namespaced(client.clone(), ns)
        .delete("geo-app-rw", &DeleteParams::default())
        .await
        .unwrap();
    let rw = wait_for("geo-app-rw recreated", CONVERGE, || async {
        get::<Secret>(client, ns, "geo-app-rw").await
    })
    .await;
    assert_eq!(secret_text(&rw, "password"), password);
    assert_eq!(
        secret_text(
            &get::<Secret>(client, ns, "geo-app").await.unwrap(),
            "password"
        ),
        password
    );

    // Drift: a hand edit of an owned object is put back.
    Api::<Service>::namespaced(client.clone(), ns)
        .patch(
            "geo-rw",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"selector": {"geodb.io/role": "replica"}}})),
        )
        .await
        .unwrap();
    wait_for("geo-rw selector restored", CONVERGE, || async {
        let svc = get::<Service>(client, ns, "geo-rw").await?;
        (svc.spec?.selector?["geodb.io/role"] == "primary").then_some(())
    })
    .await;
}

/// Merge patch turning `from` into `to`.
fn merge_patch(from: &serde_json::Value, to: &serde_json::Value) -> serde_json::Value {
    match (from, to) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            let mut out = serde_json::Map::new();
            for (k, v) in b {
                out.insert(
                    k.clone(),
                    a.get(k)
                        .map(|old| merge_patch(old, v))
                        .unwrap_or_else(|| v.clone()),
                );
            }
            for k in a.keys().filter(|k| !b.contains_key(*k)) {
                out.insert(k.clone(), serde_json::Value::Null);
            }
            serde_json::Value::Object(out)
        }
        _ => to.clone(),
    }
}

fn expectation(text: &str) -> String {
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("# expect:"))
        .unwrap_or_else(|| panic!("sample without '# expect:' line:\n{text}"))
        .trim()
        .to_owned()
}

fn sample_files(dir: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

async fn scenario_invalid_samples_rejected(client: &Client, ns: &str) {
    let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    let dynamic = |text: &str| -> serde_json::Value { serde_yaml::from_str(text).unwrap() };
    let files = sample_files("config/samples/invalid");
    assert!(files.len() >= 20, "only {} invalid samples", files.len());
    let mut failures = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let expect = expectation(&text);
        let body = dynamic(&text);
        let request = http::Request::post(format!(
            "/apis/geodb.io/v1alpha1/namespaces/{ns}/geodatabases"
        ))
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap();
        match client.request::<serde_json::Value>(request).await {
            Ok(_) => failures.push(format!("{}: accepted", path.display())),
            Err(kube::Error::Api(status)) => {
                if status.code != 422 || !status.message.contains(&expect) {
                    failures.push(format!(
                        "{}: {} {:?}, expected 422 containing {expect:?}",
                        path.display(),
                        status.code,
                        status.message
                    ));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
    }
    for path in sample_files("config/samples/invalid-updates") {
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = expectation(&text);
        let mut docs = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde_json::Value::deserialize(d).unwrap());
        let original: GeoDatabase = serde_json::from_value(docs.next().unwrap()).unwrap();
        let update: serde_json::Value = docs.next().unwrap();
        api.create(&PostParams::default(), &original).await.unwrap();
        // The whole new spec: fields it lacks are removed (null in a merge patch), as a
        // replace would; a merge patch needs no resourceVersion, so the operator's own
        // writes to the object cannot make it conflict.
        let patch = json!({"spec": merge_patch(&serde_json::to_value(&original.spec).unwrap(), &update["spec"])});
        match api
            .patch(
                &original.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(_) => failures.push(format!("{}: update accepted", path.display())),
            Err(kube::Error::Api(status))
                if status.code == 422 && status.message.contains(&expect) => {}
            Err(e) => failures.push(format!("{}: {e}, expected {expect:?}", path.display())),
        }
        api.delete(&original.name_any(), &DeleteParams::default())
            .await
            .unwrap();
    }
    assert!(
        failures.is_empty(),
        "invalid samples not rejected as expected:\n{}",
        failures.join("\n")
    );
}

use serde::Deserialize;

async fn scenario_semantic_errors_degrade(client: &Client, ns: &str) {
    let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    for path in sample_files("config/samples/semantic") {
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = expectation(&text);
        let db: GeoDatabase = serde_yaml::from_str(&text).unwrap();
        let name = db.name_any();
        api.create(&PostParams::default(), &db).await.unwrap();
        let degraded = wait_for(
            &format!("{} Degraded", path.display()),
            CONVERGE,
            || async {
                let db = api.get(&name).await.ok()?;
                let status = db.status?;
                let c = status
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Degraded" && c.status == "True")?;
                (status.phase == Some(Phase::Degraded)).then(|| c.message.clone())
            },
        )
        .await;
        assert!(
            degraded.contains(&expect),
            "{}: {degraded:?} lacks {expect:?}",
            path.display()
        );
        wait_for(
            &format!("{} InvalidSpec event", path.display()),
            CONVERGE,
            || async {
                let events = Api::<Event>::namespaced(client.clone(), ns)
                    .list(&ListParams::default())
                    .await
                    .ok()?;
                let found = events.iter().any(|e| {
                    e.reason.as_deref() == Some("InvalidSpec")
                        && e.note.as_deref().is_some_and(|n| n.contains(&expect))
                });
                found.then_some(())
            },
        )
        .await;
        // Nothing half-applied.
        let selector = format!("geodb.io/cluster={name}");
        assert!(names::<StatefulSet>(client, ns, &selector).await.is_empty());
        assert!(names::<Deployment>(client, ns, &selector).await.is_empty());
        assert!(names::<Service>(client, ns, &selector).await.is_empty());
        assert!(names::<Secret>(client, ns, &selector).await.is_empty());
        assert!(names::<ConfigMap>(client, ns, &selector).await.is_empty());
    }

    // Once the missing StorageClass exists, the same GeoDatabase converges.
    let missing = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.spec.storage.storage_class_name.as_deref() == Some("no-such-class"))
        .expect("a semantic sample with storageClassName no-such-class");
    let class: StorageClass = serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": "no-such-class"}, "provisioner": "example.com/none"
    }))
    .unwrap();
    Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &class)
        .await
        .unwrap();
    let name = missing.name_any();
    // The operator rechecks invalid specs every minute; an edit of the object prompts it now.
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"example.com/touched": "1"}}})),
    )
    .await
    .unwrap();
    wait_for(
        "the GeoDatabase to recover once its StorageClass exists",
        CONVERGE,
        || async {
            let db = api.get(&name).await.ok()?;
            let status = db.status?;
            let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded")?;
            (degraded.status == "False"
                && !names::<StatefulSet>(client, ns, &format!("geodb.io/cluster={name}"))
                    .await
                    .is_empty())
            .then_some(())
        },
    )
    .await;
    apply_refusal_degrades(client, &format!("{ns}-quota")).await;
}

/// What passes the validate step but the API server refuses (here a quota that allows no
/// StatefulSet) is Degraded with the server's words and an Event, not retried in silence.
async fn apply_refusal_degrades(client: &Client, ns: &str) {
    create_namespace(client, ns).await;
    let quota: ResourceQuota = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "no-statefulsets"},
        "spec": {"hard": {"count/statefulsets.apps": "0"}}
    }))
    .unwrap();
    let quotas = Api::<ResourceQuota>::namespaced(client.clone(), ns);
    quotas.create(&PostParams::default(), &quota).await.unwrap();
    // Admission reads the quota's status, which the quota controller (not run here) would
    // write: written by hand, then awaited until a dry-run StatefulSet is refused.
    let counted = json!({"count/statefulsets.apps": "0"});
    quotas
        .patch_status(
            "no-statefulsets",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"hard": counted, "used": counted}})),
        )
        .await
        .unwrap();
    let probe: StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "probe"},
        "spec": {"selector": {"matchLabels": {"app": "probe"}}, "serviceName": "probe",
            "template": {"metadata": {"labels": {"app": "probe"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}
    }))
    .unwrap();
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    wait_for("the quota to refuse StatefulSets", CONVERGE, || async {
        let created = Api::<StatefulSet>::namespaced(client.clone(), ns)
            .create(&dry_run, &probe)
            .await;
        matches!(created, Err(kube::Error::Api(s)) if s.code == 403).then_some(())
    })
    .await;
    let mut db = sample();
    db.metadata.name = Some("quota".into());
    create_db(client, ns, &db).await;
    let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    let message = wait_for(
        "the refused StatefulSet to be Degraded",
        CONVERGE,
        || async {
            let status = api.get("quota").await.ok()?.status?;
            let c = status.conditions.iter().find(|c| {
                c.type_ == "Degraded" && c.status == "True" && c.reason == "ApplyRefused"
            })?;
            (status.phase == Some(Phase::Degraded)).then(|| c.message.clone())
        },
    )
    .await;
    assert!(
        message.contains("the API server refused StatefulSet/quota-") && message.contains("quota"),
        "{message}"
    );
    wait_for("an ApplyRefused Event", CONVERGE, || async {
        let events = Api::<Event>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .ok()?;
        let found = events.iter().any(|e| {
            e.reason.as_deref() == Some("ApplyRefused")
                && e.note
                    .as_deref()
                    .is_some_and(|n| n.contains("the API server refused StatefulSet/quota-"))
        });
        found.then_some(())
    })
    .await;
}

async fn scenario_deletion_policy(client: &Client, op: &Operator, ns: &str) {
    let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    let mut kept_password = String::new();
    for (name, policy) in [("keep", "Retain"), ("drop", "Delete")] {
        let mut db = sample();
        db.metadata.name = Some(name.into());
        db.spec.instances = 2;
        db.spec.deletion_policy = serde_json::from_value(json!(policy)).unwrap();
        create_db(client, ns, &db).await;
        wait_converged(client, ns, name, 2).await;
        if name == "keep" {
            let app = get::<Secret>(client, ns, "keep-app").await.unwrap();
            kept_password = secret_text(&app, "password");
        }
        let selector = format!("geodb.io/cluster={name}");
        wait_for(&format!("{name}: 2 PVCs"), CONVERGE, || async {
            (names::<PersistentVolumeClaim>(client, ns, &selector)
                .await
                .len()
                == 2)
                .then_some(())
        })
        .await;
        api.delete(name, &DeleteParams::default()).await.unwrap();
        wait_for(
            &format!("{name}: GeoDatabase and StatefulSets gone"),
            CONVERGE,
            || async {
                let db_gone = api.get_opt(name).await.ok()?.is_none();
                (db_gone && names::<StatefulSet>(client, ns, &selector).await.is_empty())
                    .then_some(())
            },
        )
        .await;
        // Nothing of it stays in the operator's memory: probes, applied objects, backoff.
        wait_for(
            &format!("{name}: the operator forgets it"),
            CONVERGE,
            || async { (!op.ctx.keeps(ns, name)).then_some(()) },
        )
        .await;
        let pvcs = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels(&selector))
            .await
            .unwrap();
        let alive: Vec<_> = pvcs
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        match policy {
            "Retain" => {
                assert_eq!(alive.len(), 2, "Retain lost a PVC");
                assert!(alive.iter().all(|p| p.owner_references().is_empty()));
            }
            _ => assert!(
                alive.is_empty(),
                "Delete kept PVCs: {:?}",
                alive.iter().map(|p| p.name_any()).collect::<Vec<_>>()
            ),
        }
    }
    // A GeoDatabase of the same name finds the retained volumes again.
    let mut again = sample();
    again.metadata.name = Some("keep".into());
    again.spec.instances = 2;
    create_db(client, ns, &again).await;
    let back = wait_converged(client, ns, "keep", 2).await;
    assert_eq!(
        names::<PersistentVolumeClaim>(client, ns, "geodb.io/cluster=keep").await,
        ["pgdata-keep-1-0", "pgdata-keep-2-0"]
    );
    // The kept volumes recorded the last primary, and it is the primary again.
    let pvc = get::<PersistentVolumeClaim>(client, ns, "pgdata-keep-2-0")
        .await
        .unwrap();
    assert_eq!(
        pvc.annotations()
            .get("geodb.io/last-primary")
            .map(String::as_str),
        Some("keep-1")
    );
    assert_eq!(
        back.status
            .as_ref()
            .and_then(|s| s.current_primary.as_deref()),
        Some("keep-1")
    );
    // The credentials were kept and adopted: same password, owned by the new GeoDatabase.
    let uid = back.uid().unwrap();
    wait_for("keep-app adopted", CONVERGE, || async {
        let app = get::<Secret>(client, ns, "keep-app").await?;
        (app.owner_references().iter().any(|o| o.uid == uid)
            && !app
                .annotations()
                .contains_key("geodb.io/retained-by-deleted-geodatabase"))
        .then_some(())
    })
    .await;
    let app = get::<Secret>(client, ns, "keep-app").await.unwrap();
    assert_eq!(
        secret_text(&app, "password"),
        kept_password,
        "the password changed"
    );
}

/// Taint of the spread scenario's Nodes: only its pods tolerate it, so the other
/// scenarios' pods stay unscheduled as they would without a scheduler.
const SPREAD_TAINT: &str = "geodb.io/test-spread";

/// A Node no kubelet stands behind: room for pods, Ready, its own hostname and a zone.
async fn fake_node(client: &Client, name: &str, zone: &str) {
    let api = Api::<Node>::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone,
        }},
    }))
    .unwrap();
    api.create(&PostParams::default(), &node).await.unwrap();
    // What a kubelet would report, through the status subresource as it would.
    let room = json!({"cpu": "4", "memory": "8Gi", "pods": "110"});
    let status = json!({"status": {"capacity": room, "allocatable": room, "conditions": [{
        "type": "Ready", "status": "True", "reason": "KubeletReady",
        "message": "the spread scenario stands in for the kubelet",
    }]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
    // The admission plugin TaintNodesByCondition taints a new Node not-ready; the node
    // lifecycle controller, which would lift it once the Node is Ready, does not run here.
    let taints = json!({"spec": {"taints": [
        {"key": SPREAD_TAINT, "value": "true", "effect": "NoSchedule"},
    ]}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(taints))
        .await
        .unwrap();
}

/// The data volume of `instance`, made and bound before its StatefulSet asks for it: no
/// provisioner or PV controller runs here, and the scheduler binds no pod whose claim is
/// unbound. Without the cluster's labels, so the operator does not take it for a kept
/// volume of an earlier cluster.
async fn bound_volume(client: &Client, ns: &str, instance: &str) {
    let claim = geodb::names::Names::pvc(instance);
    let volume = format!("{ns}-{claim}");
    let pv: PersistentVolume = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": volume},
        "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "storageClassName": "", "hostPath": {"path": "/nonexistent"},
            "claimRef": {"namespace": ns, "name": claim},
        },
    }))
    .unwrap();
    Api::<PersistentVolume>::all(client.clone())
        .create(&PostParams::default(), &pv)
        .await
        .unwrap();
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim, "annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
        "spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": volume,
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }))
    .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pvc)
        .await
        .unwrap();
}

/// Pod name -> node name of the bound pods that `selector` selects.
async fn placement(client: &Client, ns: &str, selector: &str) -> BTreeMap<String, String> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .iter()
        .filter_map(|p| Some((p.name_any(), p.spec.as_ref()?.node_name.clone()?)))
        .collect()
}

async fn scenario_spread_and_budgets(client: &Client, evicting: &Client, ns: &str) {
    let zones = BTreeMap::from([
        ("spread-a1", "zone-a"),
        ("spread-a2", "zone-a"),
        ("spread-b1", "zone-b"),
        ("spread-c1", "zone-c"),
    ]);
    for (node, zone) in &zones {
        fake_node(client, node, zone).await;
    }
    for instance in ["geo-1", "geo-2", "geo-3"] {
        bound_volume(client, ns, instance).await;
    }
    let mut db = sample();
    db.spec.pooler.instances = 2;
    db.spec.scheduling.tolerations = vec![Toleration {
        key: Some(SPREAD_TAINT.into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Toleration::default()
    }];
    create_db(client, ns, &db).await;

    // Three instances on three nodes (the preferred anti-affinity), in three zones (the
    // spread over zones: two nodes share zone-a).
    let instances = "geodb.io/cluster=geo,app.kubernetes.io/component=database";
    let placed = wait_seeing("3 instance pods bound", CONVERGE, || async {
        let placed = placement(client, ns, instances).await;
        if placed.len() == 3 {
            Ok(placed)
        } else {
            Err(format!("bound: {placed:?}"))
        }
    })
    .await;
    let nodes: BTreeSet<&String> = placed.values().collect();
    assert_eq!(nodes.len(), 3, "instances share a node: {placed:?}");
    let in_zones: BTreeSet<&str> = nodes.iter().map(|n| zones[n.as_str()]).collect();
    assert_eq!(in_zones.len(), 3, "instances share a zone: {placed:?}");
    // Each pooler's two pods on two nodes.
    for pooler in ["pooler", "pooler-ro"] {
        let selector = format!("geodb.io/cluster=geo,app.kubernetes.io/component={pooler}");
        let placed = wait_seeing(&format!("2 {pooler} pods bound"), CONVERGE, || async {
            let placed = placement(client, ns, &selector).await;
            if placed.len() == 2 {
                Ok(placed)
            } else {
                Err(format!("bound: {placed:?}"))
            }
        })
        .await;
        let nodes: BTreeSet<&String> = placed.values().collect();
        assert_eq!(nodes.len(), 2, "{pooler} pods share a node: {placed:?}");
    }

    // The budgets count Ready pods. No kubelet runs these: the test stands in for it and
    // reports them Ready, once the operator has labelled their roles.
    wait_seeing("pods labelled with their roles", CONVERGE, || async {
        let primary = names::<Pod>(client, ns, "geodb.io/cluster=geo,geodb.io/role=primary").await;
        let replicas = names::<Pod>(client, ns, "geodb.io/cluster=geo,geodb.io/role=replica").await;
        if primary == ["geo-1-0"] && replicas == ["geo-2-0", "geo-3-0"] {
            Ok(())
        } else {
            Err(format!("primary {primary:?}, replicas {replicas:?}"))
        }
    })
    .await;
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    for pod in ["geo-1-0", "geo-2-0", "geo-3-0"] {
        let ready = json!({"status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True"},
        ]}});
        pods.patch_status(pod, &PatchParams::default(), &Patch::Strategic(ready))
            .await
            .unwrap();
    }
    let budgets = Api::<PodDisruptionBudget>::namespaced(client.clone(), ns);
    // (healthy, disruptions allowed) of a budget, once it describes its current spec.
    let counted = |b: &PodDisruptionBudget| {
        let status = b.status.as_ref()?;
        (status.observed_generation == b.metadata.generation)
            .then_some((status.current_healthy, status.disruptions_allowed))
    };
    wait_seeing(
        "the budgets to count the Ready instances",
        CONVERGE,
        || async {
            let primary = budgets.get_opt("geo-primary").await.unwrap();
            let replicas = budgets.get_opt("geo-replicas").await.unwrap();
            let seen = (
                primary.as_ref().and_then(counted),
                replicas.as_ref().and_then(counted),
            );
            if seen == (Some((1, 0)), Some((2, 1))) {
                Ok(())
            } else {
                Err(format!("geo-primary, geo-replicas: {seen:?}"))
            }
        },
    )
    .await;

    // A drain: one replica may go; then neither the other replica nor the primary.
    let pods = Api::<Pod>::namespaced(evicting.clone(), ns);
    pods.evict("geo-2-0", &EvictParams::default())
        .await
        .unwrap_or_else(|e| panic!("evicting the first replica: {e}"));
    for pod in ["geo-3-0", "geo-1-0"] {
        match pods.evict(pod, &EvictParams::default()).await {
            Err(kube::Error::Api(status))
                if status.code == 429 && status.message.contains("disruption budget") => {}
            other => panic!("evicting {pod} after geo-2-0: {other:?}, expected 429"),
        }
    }
    let alive: Vec<String> = pods
        .list(&ListParams::default().labels(instances))
        .await
        .unwrap()
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.name_any())
        .collect();
    assert_eq!(alive, ["geo-1-0", "geo-3-0"], "pods not being deleted");

    // Leave no Node behind for the scenarios after this one.
    for node in zones.keys() {
        Api::<Node>::all(client.clone())
            .delete(node, &DeleteParams::default())
            .await
            .unwrap();
    }
}

async fn scenario_leader_election(client: &Client) {
    let election = |identity: &str| LeaderElection {
        namespace: "geodb-system".into(),
        name: "geodb-test-leader".into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(2),
        renew_every: Duration::from_millis(500),
    };
    let (a, b) = (election("a"), election("b"));
    assert!(
        a.try_acquire(client).await.unwrap(),
        "a could not take a free Lease"
    );
    assert!(
        !b.try_acquire(client).await.unwrap(),
        "b took a Lease a holds"
    );
    assert!(a.try_acquire(client).await.unwrap(), "a could not renew");
    // a stops renewing: b takes over only after the lease expires.
    wait_for(
        "b to take over the expired Lease",
        Duration::from_secs(10),
        || async { b.try_acquire(client).await.unwrap().then_some(()) },
    )
    .await;
    assert!(
        !a.try_acquire(client).await.unwrap(),
        "a took the Lease back from b"
    );
}

// Each scenario is its own test (select one by name); all of them share one control plane
// and one operator, started by the first and taking turns (`common::run_scenario`).

#[tokio::test]
async fn creates_every_object() {
    run_scenario(Some("t-create"), |h, admin| async move {
        scenario_creates_every_object(&admin, &h.operator, "t-create").await;
    })
    .await;
}

#[tokio::test]
async fn spec_changes_converge() {
    run_scenario(Some("t-changes"), |_, admin| async move {
        scenario_spec_changes_converge(&admin, "t-changes").await;
    })
    .await;
}

#[tokio::test]
async fn invalid_samples_rejected() {
    run_scenario(Some("t-invalid"), |_, admin| async move {
        scenario_invalid_samples_rejected(&admin, "t-invalid").await;
    })
    .await;
}

#[tokio::test]
async fn semantic_errors_degrade() {
    run_scenario(Some("t-semantic"), |_, admin| async move {
        scenario_semantic_errors_degrade(&admin, "t-semantic").await;
    })
    .await;
}

#[tokio::test]
async fn deletion_policy() {
    run_scenario(Some("t-deletion"), |h, admin| async move {
        scenario_deletion_policy(&admin, &h.operator, "t-deletion").await;
    })
    .await;
}

/// `openssl verify` of `cert` against `ca` for `host`: OpenSSL is what PostgreSQL and
/// libpq check certificates with. `None` without an `openssl` program.
fn openssl_verifies(ca: &str, cert: &str, host: &str) -> Option<bool> {
    let openssl = ["/usr/bin/openssl", "/bin/openssl"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let dir = std::env::temp_dir().join(format!("geodb-verify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), ca).unwrap();
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    let out = std::process::Command::new(openssl)
        .args(["verify", "-CAfile"])
        .arg(dir.join("ca.pem"))
        .args(["-verify_hostname", host])
        .arg(dir.join("cert.pem"))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    Some(out.status.success())
}

/// Each GeoDatabase gets a CA of its own and a server certificate for its Services and
/// instances. The CA is made once; a certificate due for renewal (its recorded end moved
/// near) is reissued by the same CA, and so is one whose names changed (an instance
/// added). The CA's key never leaves the CA's Secret.
async fn scenario_certificates(client: &Client, ns: &str) {
    let mut db = sample();
    db.spec.instances = 2;
    create_db(client, ns, &db).await;
    wait_converged(client, ns, "geo", 2).await;
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    let ca = secrets.get("geo-ca").await.unwrap();
    let first = secrets.get("geo-server-tls").await.unwrap();
    assert_eq!(first.type_.as_deref(), Some("kubernetes.io/tls"));
    let ca_pem = secret_text(&ca, "ca.crt");
    assert_eq!(secret_text(&first, "ca.crt"), ca_pem);
    assert!(!first.data.as_ref().unwrap().contains_key("ca.key"));
    let cert = secret_text(&first, "tls.crt");
    for host in [
        "geo-rw",
        "geo-ro.t-certs.svc",
        "geo-pooler.t-certs.svc.cluster.local",
        "geo-2.t-certs.svc",
    ] {
        if let Some(ok) = openssl_verifies(&ca_pem, &cert, host) {
            assert!(ok, "{host} not in the certificate, or not signed by the CA");
        }
    }
    assert!(!openssl_verifies(&ca_pem, &cert, "geo-rw.elsewhere.svc").unwrap_or(false));

    // Due for renewal: a new certificate from the same CA, ending a year on.
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    secrets
        .patch(
            "geo-server-tls",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"geodb.io/tls-not-after": (now + 60).to_string()}}})),
        )
        .await
        .unwrap();
    let renewed = wait_for("the certificate renewed", CONVERGE, || async {
        let s = secrets.get("geo-server-tls").await.ok()?;
        let end: i64 = s
            .annotations()
            .get("geodb.io/tls-not-after")?
            .parse()
            .ok()?;
        (secret_text(&s, "tls.crt") != cert && end > now + 300 * 86_400).then_some(s)
    })
    .await;
    let renewed_cert = secret_text(&renewed, "tls.crt");
    if let Some(ok) = openssl_verifies(&ca_pem, &renewed_cert, "geo-rw.t-certs.svc") {
        assert!(ok, "the renewed certificate does not chain to the same CA");
    }
    assert_eq!(
        secret_text(&secrets.get("geo-ca").await.unwrap(), "ca.crt"),
        ca_pem
    );

    // A third instance: its name in a new certificate.
    patch_spec(client, ns, "geo", json!({"instances": 3})).await;
    let grown = wait_for("a certificate naming geo-3", CONVERGE, || async {
        let s = secrets.get("geo-server-tls").await.ok()?;
        (secret_text(&s, "tls.crt") != renewed_cert).then_some(s)
    })
    .await;
    if let Some(ok) = openssl_verifies(
        &ca_pem,
        &secret_text(&grown, "tls.crt"),
        "geo-3.t-certs.svc",
    ) {
        assert!(ok, "geo-3 is not in the new certificate");
    }
}

/// The Degraded message of `name` once it is Degraded with `needle` in it.
async fn degraded_with(client: &Client, ns: &str, name: &str, needle: &str) -> String {
    let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    wait_seeing(
        &format!("{ns}/{name} Degraded with {needle:?}"),
        CONVERGE,
        || async {
            let db = api.get(name).await.map_err(|e| e.to_string())?;
            let status = db.status.ok_or("no status")?;
            let c = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Degraded" && c.status == "True")
                .ok_or_else(|| format!("not Degraded: {:?}", status.conditions))?;
            if c.message.contains(needle) {
                Ok(c.message.clone())
            } else {
                Err(c.message.clone())
            }
        },
    )
    .await
}

/// A kubernetes.io/tls Secret shaped as cert-manager writes it.
fn tls_secret(name: &str, ca: &geodb::certs::Issued, server: &geodb::certs::Issued) -> Secret {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": server.cert_pem, "tls.key": server.key_pem, "ca.crt": ca.cert_pem}
    }))
    .unwrap()
}

/// A certificate the user brings (`spec.tls.serverSecret`): refused with the field named
/// while missing or lacking a name the clients check, with nothing created; once right,
/// mounted by every pod as it is, its CA handed to clients, the Secret never written.
async fn scenario_provided_certificate(client: &Client, ns: &str) {
    let mut db = sample();
    db.spec.instances = 2;
    db.spec.tls = Some(geodb::api::TlsSpec {
        server_secret: "geo-cert".into(),
    });
    create_db(client, ns, &db).await;
    let message = degraded_with(client, ns, "geo", "tls.serverSecret").await;
    assert!(message.contains("does not exist"), "{message}");

    // Signed by the user's CA, but without the instances' names.
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let ca = geodb::certs::new_ca("user-ca", ns, now).unwrap();
    let services = ["geo-rw", "geo-ro", "geo-pooler", "geo-pooler-ro"].map(String::from);
    let short = geodb::certs::issue_server(
        &ca,
        "user-ca",
        ns,
        &geodb::certs::server_names(&services, ns),
        now,
    )
    .unwrap();
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    secrets
        .create(&PostParams::default(), &tls_secret("geo-cert", &ca, &short))
        .await
        .unwrap();
    touch(client, ns, "geo").await;
    let message = degraded_with(client, ns, "geo", &format!("not valid for geo-1.{ns}.svc")).await;
    assert!(
        message.contains("tls.serverSecret: the Secret \"geo-cert\""),
        "{message}"
    );
    let selector = "geodb.io/cluster=geo";
    assert!(names::<StatefulSet>(client, ns, selector).await.is_empty());
    assert!(names::<Deployment>(client, ns, selector).await.is_empty());

    // With every name: it converges, serving the user's certificate.
    let mut hosts = services.to_vec();
    hosts.extend(["geo-1".into(), "geo-2".into()]);
    let full = geodb::certs::issue_server(
        &ca,
        "user-ca",
        ns,
        &geodb::certs::server_names(&hosts, ns),
        now,
    )
    .unwrap();
    let written = secrets
        .replace(
            "geo-cert",
            &PostParams::default(),
            &tls_secret("geo-cert", &ca, &full),
        )
        .await
        .unwrap();
    touch(client, ns, "geo").await;
    wait_converged(client, ns, "geo", 2).await;
    let sts = get::<StatefulSet>(client, ns, "geo-1").await.unwrap();
    let mounted = serde_json::to_string(&sts.spec.unwrap().template.spec.unwrap().volumes).unwrap();
    assert!(mounted.contains("\"geo-cert\""), "{mounted}");
    let pooler = get::<Deployment>(client, ns, "geo-pooler").await.unwrap();
    let mounted =
        serde_json::to_string(&pooler.spec.unwrap().template.spec.unwrap().volumes).unwrap();
    assert!(mounted.contains("\"geo-cert\""), "{mounted}");
    let app = secrets.get("geo-app-rw").await.unwrap();
    assert_eq!(
        secret_text(&app, "ca.crt"),
        ca.cert_pem,
        "clients trust the user's CA"
    );
    let after = secrets.get("geo-cert").await.unwrap();
    assert_eq!(
        after.resource_version(),
        written.resource_version(),
        "the user's Secret was written"
    );
    assert!(after.owner_references().is_empty());
    // The user's key is not copied into any Secret of the operator.
    for secret in secrets
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
    {
        let copied = secret
            .data
            .as_ref()
            .is_some_and(|d| d.values().any(|v| v.0 == full.key_pem.as_bytes()));
        assert!(!copied, "{} holds the user's key", secret.name_any());
    }
}

/// Prompt a reconcile now (an invalid spec is otherwise rechecked every minute).
async fn touch(client: &Client, ns: &str, name: &str) {
    let stamp = k8s_openapi::jiff::Timestamp::now().to_string();
    Api::<GeoDatabase>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"example.com/touched": stamp}}})),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn provided_certificate() {
    run_scenario(Some("t-own-cert"), |_, admin| async move {
        scenario_provided_certificate(&admin, "t-own-cert").await;
    })
    .await;
}

#[tokio::test]
async fn certificates_issued_and_renewed() {
    run_scenario(Some("t-certs"), |_, admin| async move {
        scenario_certificates(&admin, "t-certs").await;
    })
    .await;
}

#[tokio::test]
async fn spread_and_budgets() {
    run_scenario(Some("t-spread"), |h, admin| async move {
        scenario_spread_and_budgets(&admin, &h.admin_without_retries(), "t-spread").await;
    })
    .await;
}

#[tokio::test]
async fn leader_election() {
    run_scenario(None, |h, _| async move {
        scenario_leader_election(&h.operator_client()).await;
    })
    .await;
}

/// The operator's metrics name its reconciles; run alone, this test gives it one to count.
#[tokio::test]
async fn operator_exports_reconcile_metrics() {
    run_scenario(Some("t-metrics"), |h, admin| async move {
        create_db(&admin, "t-metrics", &sample()).await;
        let metrics = wait_for("reconcile metrics", CONVERGE, || async {
            let mut metrics = String::new();
            prometheus_client::encoding::text::encode(&mut metrics, &h.operator.registry).unwrap();
            metrics
                .contains("geodb_reconcile_duration_seconds_bucket")
                .then_some(metrics)
        })
        .await;
        assert!(metrics.contains("geodb_reconciliations_total"), "{metrics}");
        assert!(
            metrics.contains("geodb_reconcile_duration_seconds_bucket"),
            "{metrics}"
        );
    })
    .await;
}

/// `spec.monitoring`: a PodMonitor kept while the CRD is served and removed when turned
/// off; a custom queries ConfigMap that is missing or does not parse degrades the
/// GeoDatabase naming the field, and a valid one clears it.
async fn scenario_monitoring_objects(client: &Client, ns: &str) {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    // The harness serves the PodMonitor kind from the start (`install_pod_monitor_crd`).
    let mut db = sample();
    db.metadata.name = Some("mon".into());
    create_db(client, ns, &db).await;
    let gvk = GroupVersionKind::gvk("monitoring.coreos.com", "v1", "PodMonitor");
    let monitors: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk(&gvk));
    let monitor = wait_for("the PodMonitor kept", CONVERGE, || async {
        monitors.get("mon").await.ok()
    })
    .await;
    let spec = &monitor.data["spec"];
    assert_eq!(spec["selector"]["matchLabels"]["geodb.io/cluster"], "mon");
    let ports: Vec<&str> = spec["podMetricsEndpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["port"].as_str())
        .collect();
    assert_eq!(ports, ["agent", "metrics"]);
    assert_eq!(
        monitor.metadata.owner_references.as_ref().unwrap()[0].kind,
        "GeoDatabase"
    );
    // The metrics Service selects the instances' agent port.
    let svc: Service = get(client, ns, "mon-metrics").await.unwrap();
    let port = &svc.spec.unwrap().ports.unwrap()[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("metrics"), 8008));

    patch_spec(
        client,
        ns,
        "mon",
        json!({"monitoring": {"podMonitor": false}}),
    )
    .await;
    wait_for("the PodMonitor removed", CONVERGE, || async {
        matches!(monitors.get("mon").await, Err(kube::Error::Api(e)) if e.code == 404).then_some(())
    })
    .await;

    patch_spec(
        client,
        ns,
        "mon",
        json!({"monitoring": {"customQueries": "mon-queries"}}),
    )
    .await;
    let missing = degraded_with(client, ns, "mon", "monitoring.customQueries").await;
    assert!(missing.contains("does not exist"), "{missing}");
    let configs = Api::<ConfigMap>::namespaced(client.clone(), ns);
    let bad: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "mon-queries"},
        "data": {"queries.yaml": "- {name: app_x, query: 'SELECT 1 AS a', metrics: [{column: a, type: summary}]}"}}))
    .unwrap();
    configs.create(&PostParams::default(), &bad).await.unwrap();
    let wrong = degraded_with(client, ns, "mon", "queries.yaml").await;
    assert!(wrong.contains("monitoring.customQueries"), "{wrong}");
    configs
        .patch(
            "mon-queries",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"queries.yaml":
                "- {name: app_x, query: 'SELECT 1 AS a', metrics: [{column: a, type: gauge}]}"}})),
        )
        .await
        .unwrap();
    let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    wait_for("Degraded cleared", CONVERGE, || async {
        let status = api.get("mon").await.ok()?.status?;
        (!status
            .conditions
            .iter()
            .any(|c| c.type_ == "Degraded" && c.status == "True"))
        .then_some(())
    })
    .await;
    // The instances mount it.
    let sts: StatefulSet = get(client, ns, "mon-1").await.unwrap();
    let volumes = sts.spec.unwrap().template.spec.unwrap().volumes.unwrap();
    assert!(volumes.iter().any(|v| v
        .config_map
        .as_ref()
        .is_some_and(|c| c.name == "mon-queries")));
}

#[tokio::test]
async fn monitoring_objects() {
    run_scenario(Some("t-monitoring"), |_, admin| async move {
        scenario_monitoring_objects(&admin, "t-monitoring").await;
    })
    .await;
}
