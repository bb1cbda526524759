//! Shared pieces of the API-server tests: the operator running in-process with its own
//! RBAC, waits with deadlines, and diagnostics printed on failure.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use geodb::api::GeoDatabase;
use geodb::controller::{self, Context};
use geodb::runtime::metrics::Metrics;
use geodb_e2e::controlplane::ControlPlane;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

pub use geodb_e2e::kube_util::repo_root;

/// Poll `probe` until it yields `Some`; panic after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    geodb_e2e::kube_util::wait_for(what, timeout, probe)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

pub async fn install_crds(client: &Client) {
    geodb_e2e::kube_util::install_crds(client).await.unwrap();
}

pub async fn install_operator_rbac(client: &Client) {
    geodb_e2e::kube_util::install_operator_rbac_for_user(
        client,
        geodb_e2e::controlplane::OPERATOR_USER,
    )
    .await
    .unwrap();
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
        // The operator's log goes to the test's output, shown when a scenario fails.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("geodb=info")),
            )
            .with_test_writer()
            .try_init();
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let client =
            geodb::runtime::kube_client::counting_client(cp.operator_config(), metrics.clone())
                .unwrap();
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

/// A request on one named object, for [`may`].
#[derive(Debug)]
pub struct Access<'a> {
    pub namespace: &'a str,
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub name: &'a str,
}

/// Whether RBAC lets `user` make the request `access` (a SubjectAccessReview).
pub async fn may(client: &Client, user: &str, access: &Access<'_>) -> bool {
    use k8s_openapi::api::authorization::v1::SubjectAccessReview;
    let review: SubjectAccessReview = serde_json::from_value(serde_json::json!({
        "spec": {
            "user": user,
            "resourceAttributes": {
                "namespace": access.namespace, "verb": access.verb, "group": access.group,
                "resource": access.resource, "name": access.name,
            },
        },
    }))
    .unwrap();
    Api::<SubjectAccessReview>::all(client.clone())
        .create(&kube::api::PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .is_some_and(|s| s.allowed)
}
