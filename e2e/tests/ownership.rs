//! No takeover, against a real kube-apiserver: an object that a GeoDatabase would create,
//! made first by someone else under the same name, is never written, adopted or read.
//! The GeoDatabase is Degraded with a `NameConflict` naming the object, nothing of it is
//! created, and once the foreign object is gone it converges.
//!
//! One scenario per kind (a credentials Secret, the instances' ServiceAccount and
//! RoleBinding, the read-write Service, the instance ConfigMap), each in its own
//! namespace; some foreign objects even carry the cluster's labels, so that the watch
//! caches hold them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use geodb::api::{GeoDatabase, Phase};
use geodb::names::Names;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

const CONVERGE: Duration = Duration::from_secs(60);
const NAME: &str = "geo";

fn sample() -> GeoDatabase {
    let text =
        std::fs::read_to_string(repo_root().join("config/samples/geodatabase.yaml")).unwrap();
    let mut db: GeoDatabase = serde_yaml::from_str(&text).unwrap();
    db.metadata.name = Some(NAME.into());
    db
}

/// Someone else's object under a name the GeoDatabase wants; `ours` gives it the
/// cluster's labels too.
fn foreign(kind: &str, name: &str, ours: bool) -> Value {
    let mut labels = json!({"example.com/owner": "another-team"});
    if ours {
        labels["geodb.io/cluster"] = json!(NAME);
        labels["app.kubernetes.io/managed-by"] = json!("geodb-operator");
    }
    let metadata = json!({"name": name, "labels": labels});
    match kind {
        "Secret" => json!({"apiVersion": "v1", "kind": "Secret", "metadata": metadata,
            "stringData": {"password": "known-to-someone-else"}}),
        "ServiceAccount" => {
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata})
        }
        "RoleBinding" => {
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": metadata,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "default"}]})
        }
        "Service" => json!({"apiVersion": "v1", "kind": "Service", "metadata": metadata,
            "spec": {"ports": [{"port": 80}], "selector": {"app": "web"}}}),
        "ConfigMap" => json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata,
            "data": {"setting": "theirs"}}),
        other => panic!("no foreign {other}"),
    }
}

/// Create the foreign object, then the GeoDatabase; the object stays as it was, the
/// GeoDatabase says why it stops, and goes on once the object is removed.
async fn scenario<K>(client: &Client, ns: &str, name: &str, ours: bool)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let kind = K::kind(&()).to_string();
    let objects = Api::<K>::namespaced(client.clone(), ns);
    let made: K = serde_json::from_value(foreign(&kind, name, ours)).unwrap();
    let before = objects.create(&PostParams::default(), &made).await.unwrap();
    let dbs = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    dbs.create(&PostParams::default(), &sample()).await.unwrap();

    let label = format!("{kind}/{name}");
    let message = wait_for(
        &format!("{ns}: a NameConflict on {label}"),
        CONVERGE,
        || async {
            let status = dbs.get(NAME).await.ok()?.status?;
            let degraded = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Degraded" && c.status == "True")?;
            (degraded.reason == "NameConflict" && status.phase == Some(Phase::Degraded))
                .then(|| degraded.message.clone())
        },
    )
    .await;
    assert!(message.contains(&label), "{message}");
    wait_for(&format!("{ns}: a NameConflict Event"), CONVERGE, || async {
        let events = Api::<Event>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .ok()?;
        let found = events.iter().any(|e| {
            e.reason.as_deref() == Some("NameConflict")
                && e.note.as_deref().is_some_and(|n| n.contains(&label))
        });
        found.then_some(())
    })
    .await;

    // Untouched: same resourceVersion, no owner, and nothing of the GeoDatabase made.
    let after = objects.get(name).await.unwrap();
    assert_eq!(
        after.resource_version(),
        before.resource_version(),
        "{label} was written"
    );
    assert!(after.owner_references().is_empty(), "{label}: {after:?}");
    let selector = format!("geodb.io/cluster={NAME}");
    assert!(names::<StatefulSet>(client, ns, &selector).await.is_empty());
    let mut secrets = names::<Secret>(client, ns, &selector).await;
    secrets.retain(|s| !(kind == "Secret" && s == name));
    assert!(secrets.is_empty(), "{secrets:?}");
    let mut maps = names::<ConfigMap>(client, ns, &selector).await;
    maps.retain(|m| !(kind == "ConfigMap" && m == name));
    assert!(maps.is_empty(), "{maps:?}");

    // Once the name is free (and the GeoDatabase is touched, to skip the recheck delay),
    // everything is created, the object under that name being the GeoDatabase's own.
    objects
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    wait_for(&format!("{ns}: {label} gone"), CONVERGE, || async {
        objects.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
    dbs.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"example.com/touched": "1"}}})),
    )
    .await
    .unwrap();
    wait_for(
        &format!("{ns}: the GeoDatabase to go on"),
        CONVERGE,
        || async {
            let status = dbs.get(NAME).await.ok()?.status?;
            let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded")?;
            let made = objects.get_opt(name).await.ok()??;
            let controlled = made
                .owner_references()
                .iter()
                .any(|r| r.controller == Some(true) && r.kind == "GeoDatabase" && r.name == NAME);
            (degraded.status == "False"
                && controlled
                && !names::<StatefulSet>(client, ns, &selector).await.is_empty())
            .then_some(())
        },
    )
    .await;
}

fn names_of_sample() -> Names {
    Names::new(&sample())
}

#[tokio::test]
async fn foreign_credentials_secret() {
    let name = names_of_sample().superuser_secret();
    run_scenario(Some("t-own-secret"), |_, admin| async move {
        scenario::<Secret>(&admin, "t-own-secret", &name, true).await;
    })
    .await;
}

#[tokio::test]
async fn foreign_service_account() {
    let name = names_of_sample().instance_service_account();
    run_scenario(Some("t-own-sa"), |_, admin| async move {
        scenario::<ServiceAccount>(&admin, "t-own-sa", &name, false).await;
    })
    .await;
}

#[tokio::test]
async fn foreign_role_binding() {
    let name = names_of_sample().instance_service_account();
    run_scenario(Some("t-own-rb"), |_, admin| async move {
        scenario::<RoleBinding>(&admin, "t-own-rb", &name, false).await;
    })
    .await;
}

#[tokio::test]
async fn foreign_service() {
    let name = names_of_sample().rw_service();
    run_scenario(Some("t-own-svc"), |_, admin| async move {
        scenario::<Service>(&admin, "t-own-svc", &name, true).await;
    })
    .await;
}

#[tokio::test]
async fn foreign_config_map() {
    let name = names_of_sample().config_map();
    run_scenario(Some("t-own-cm"), |_, admin| async move {
        scenario::<ConfigMap>(&admin, "t-own-cm", &name, false).await;
    })
    .await;
}
