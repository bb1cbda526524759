//! Shared pieces of the API-server tests: the operator running in-process with its own
//! RBAC, waits with deadlines, and diagnostics printed on failure.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use geodb::api::GeoDatabase;
use geodb::controller::{self, Context};
use geodb::metrics::Metrics;
use geodb_e2e::controlplane::ControlPlane;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use kube::{Api, Client, Discovery, ResourceExt};
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Poll `probe` until it yields `Some`, or fail after `timeout` with `describe`'s output.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Apply every document of a YAML file as the admin (server-side apply).
pub async fn apply_yaml(client: &Client, text: &str, namespace: Option<&str>) {
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc).unwrap();
        if value.is_null() {
            continue;
        }
        let obj: DynamicObject = serde_yaml::from_value(value).unwrap();
        let types = obj.types.clone().unwrap();
        let gvk = GroupVersionKind::try_from(&types).unwrap();
        let (ar, caps): (ApiResource, ApiCapabilities) = discovery.resolve_gvk(&gvk).unwrap();
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                obj.namespace()
                    .as_deref()
                    .or(namespace)
                    .unwrap_or("default"),
                &ar,
            ),
            Scope::Cluster => Api::all_with(client.clone(), &ar),
        };
        api.patch(
            &obj.name_any(),
            &PatchParams::apply("geodb-tests").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {} {}: {e}", gvk.kind, obj.name_any()));
    }
}

use serde::Deserialize;

pub async fn install_crds(client: &Client) {
    let dir = repo_root().join("crds");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        apply_yaml(client, &std::fs::read_to_string(&path).unwrap(), None).await;
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    wait_for(
        "the GeoDatabase CRD to be established",
        Duration::from_secs(30),
        || {
            let crds = crds.clone();
            async move {
                let crd = crds.get("geodatabases.geodb.io").await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            }
        },
    )
    .await;
}

/// Install the operator's RBAC from config/rbac and bind it to the harness user
/// `geodb-operator`, so the in-process operator has exactly the rights it ships with.
pub async fn install_operator_rbac(client: &Client) {
    apply_yaml(
        client,
        &std::fs::read_to_string(repo_root().join("config/manager/namespace.yaml")).unwrap(),
        None,
    )
    .await;
    let rbac = std::fs::read_to_string(repo_root().join("config/rbac/role.yaml")).unwrap();
    apply_yaml(client, &rbac, None).await;
    let bindings = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: geodb-operator-test-user
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: geodb-operator}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: geodb-operator}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: geodb-operator-test-user
  namespace: geodb-system
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: geodb-operator-leader}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: geodb-operator}]
"#;
    apply_yaml(client, bindings, None).await;
}

/// The operator, running in this process as the `geodb-operator` user.
pub struct Operator {
    pub ctx: Arc<Context>,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Operator {
    pub fn start(cp: &ControlPlane) -> Self {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let client =
            geodb::kube_client::counting_client(cp.operator_config(), metrics.clone()).unwrap();
        let ctx = Context::new(client, metrics.clone(), Some("test".into()));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(controller::run(ctx.clone(), None, async move {
            let _ = stopped.await;
        }));
        Self {
            ctx,
            metrics,
            registry,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Reconcile once, directly, outside the controller's queue.
    pub async fn reconcile(&self, db: GeoDatabase) {
        controller::reconcile(Arc::new(db), self.ctx.clone())
            .await
            .unwrap_or_else(|e| panic!("direct reconcile failed: {e}"));
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
    }
}

pub async fn create_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
    }))
    .unwrap();
    api.create(&PostParams::default(), &ns).await.unwrap();
}

pub async fn get<K>(client: &Client, namespace: &str, name: &str) -> Option<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .unwrap()
}

pub async fn names<K>(client: &Client, namespace: &str, selector: &str) -> Vec<String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let mut names: Vec<String> = Api::<K>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| o.name_any())
        .collect();
    names.sort();
    names
}

/// Everything worth seeing when a scenario fails.
pub async fn dump_namespace(client: &Client, cp: &ControlPlane, namespace: &str) {
    eprintln!("==== diagnostics for namespace {namespace} ====");
    if let Ok(list) = Api::<GeoDatabase>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
    {
        for db in list {
            eprintln!(
                "GeoDatabase {}: spec={} status={}",
                db.name_any(),
                serde_json::to_string(&db.spec).unwrap_or_default(),
                serde_json::to_string(&db.status).unwrap_or_default()
            );
        }
    }
    for (kind, names) in [
        (
            "StatefulSet",
            names::<StatefulSet>(client, namespace, "").await,
        ),
        ("Pod", names::<Pod>(client, namespace, "").await),
    ] {
        eprintln!("{kind}: {names:?}");
    }
    if let Ok(events) = Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
    {
        for e in events {
            eprintln!(
                "Event {} {}: {}",
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default()
            );
        }
    }
    eprintln!(
        "---- kube-apiserver log tail ----\n{}",
        cp.logs_tail("kube-apiserver", 20)
    );
    eprintln!(
        "---- kube-controller-manager log tail ----\n{}",
        cp.logs_tail("kube-controller-manager", 20)
    );
}
