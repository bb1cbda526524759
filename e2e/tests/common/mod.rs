//! Shared pieces of the API-server tests: one control plane and one in-process operator
//! (with only its own RBAC) shared by every test of a binary, waits with deadlines, and
//! diagnostics printed on failure.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt as _;
use geodb::api::GeoDatabase;
use geodb::controller::{self, Context};
use geodb::runtime::metrics::Metrics;
use geodb_e2e::controlplane::{ControlPlane, Options};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::{oneshot, OnceCell};

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

/// Poll `probe` until it yields `Ok`; panic after `timeout` with what it last saw (its
/// last `Err`).
pub async fn wait_seeing<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let seen = Mutex::new(String::from("nothing yet"));
    let outcome = geodb_e2e::kube_util::wait_for(what, timeout, || {
        let attempt = probe();
        let seen = &seen;
        async move {
            attempt
                .await
                .map_err(|now| *seen.lock().unwrap() = now)
                .ok()
        }
    })
    .await;
    outcome.unwrap_or_else(|e| panic!("{e}; last seen: {}", seen.lock().unwrap()))
}

pub async fn install_crds(client: &Client) {
    geodb_e2e::kube_util::install_crds(client).await.unwrap();
}

/// A stand-in for the Prometheus Operator's PodMonitor CRD (the kind, any content),
/// served before the operator starts: the operator keeps a PodMonitor per GeoDatabase.
pub async fn install_pod_monitor_crd(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "podmonitors.monitoring.coreos.com"},
        "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
            "names": {"kind": "PodMonitor", "plural": "podmonitors", "singular": "podmonitor", "listKind": "PodMonitorList"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    }))
    .unwrap();
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    match api.create(&PostParams::default(), &crd).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating the PodMonitor CRD: {e}"),
    }
    wait_for(
        "the PodMonitor CRD served",
        Duration::from_secs(60),
        || async {
            let crd = api.get("podmonitors.monitoring.coreos.com").await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        },
    )
    .await;
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
    // Behind locks so a shared operator can be stopped through `&self` at exit.
    stop: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
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
            stop: Mutex::new(Some(stop)),
            task: Mutex::new(Some(task)),
        }
    }

    /// Reconcile once, directly, outside the controller's queue.
    pub async fn reconcile(&self, db: GeoDatabase) {
        controller::reconcile(Arc::new(db), self.ctx.clone())
            .await
            .unwrap_or_else(|e| panic!("direct reconcile failed: {e}"));
    }

    pub async fn stop(&self) {
        if let Some(stop) = self.stop.lock().unwrap().take() {
            let _ = stop.send(());
        }
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
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
pub async fn dump_namespace(client: &Client, h: &Harness, namespace: &str) {
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
        h.logs_tail("kube-apiserver", 20)
    );
    eprintln!(
        "---- kube-controller-manager log tail ----\n{}",
        h.logs_tail("kube-controller-manager", 20)
    );
    eprintln!(
        "---- kube-scheduler log tail ----\n{}",
        h.logs_tail("kube-scheduler", 20)
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

/// The control plane and the operator every test of a binary shares, started by the
/// first test that asks for them and stopped when the process exits.
///
/// Each `#[tokio::test]` has its own runtime, dropped when the test ends, so the
/// operator and the clients it built run on a runtime of their own that lives as long
/// as the process.
pub struct Harness {
    admin: kube::Config,
    operator_user: kube::Config,
    pub operator: Operator,
    // Taken and dropped at exit (stopping the processes, removing the directory).
    cp: Mutex<Option<ControlPlane>>,
    // Scenarios take turns, in the order they ask: the zero-writes check counts the
    // shared operator's writes in every namespace.
    turn: tokio::sync::Mutex<()>,
}

// Taken at exit: shutting it down closes the operator's watches, which would hold up
// kube-apiserver's shutdown.
static RUNTIME: Mutex<Option<Runtime>> = Mutex::new(None);
static HARNESS: OnceCell<Result<Harness, String>> = OnceCell::const_new();

fn harness_runtime() -> Handle {
    let mut runtime = RUNTIME.lock().unwrap();
    runtime
        .get_or_insert_with(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("geodb-harness")
                .enable_all()
                .build()
                .expect("the harness runtime")
        })
        .handle()
        .clone()
}

/// The shared harness, started on first use. A failed start fails every test that asks
/// with the same message instead of starting another control plane (a panic while
/// installing leaves it unset: the next test tries again).
pub async fn harness() -> &'static Harness {
    let started = HARNESS
        .get_or_init(|| async {
            // The CRDs go in before kube-controller-manager starts, so that its garbage
            // collector deletes what a GeoDatabase owns from the first scenario on.
            // kube-scheduler binds pods only to the Nodes a scenario makes (the spread
            // scenario's, tainted): the others' pods stay unscheduled, as without it.
            let options = Options {
                defer_controller_manager: true,
                scheduler: true,
                ..Options::default()
            };
            let mut cp = ControlPlane::start_with(options)
                .await
                .map_err(|e| format!("{e:#}"))?;
            let admin = cp.client().map_err(|e| format!("{e:#}"))?;
            install_crds(&admin).await;
            install_pod_monitor_crd(&admin).await;
            install_operator_rbac(&admin).await;
            cp.start_controller_manager()
                .await
                .map_err(|e| format!("{e:#}"))?;
            // The operator's tasks and clients go to the harness runtime.
            let operator = {
                let _on_harness = harness_runtime().enter();
                Operator::start(&cp)
            };
            // SAFETY: registers a function without arguments that is safe to run at
            // exit (it catches its own panics).
            unsafe { libc::atexit(stop_harness) };
            Ok(Harness {
                admin: cp.admin_config(),
                operator_user: cp.operator_config(),
                operator,
                cp: Mutex::new(Some(cp)),
                turn: tokio::sync::Mutex::new(()),
            })
        })
        .await;
    match started {
        Ok(h) => h,
        Err(e) => panic!("control plane: {e}"),
    }
}

/// Stops the shared operator, then the control plane; statics are never dropped.
extern "C" fn stop_harness() {
    let _ = std::panic::catch_unwind(|| {
        let runtime = RUNTIME.lock().ok().and_then(|mut r| r.take());
        if let (Some(Ok(h)), Some(runtime)) = (HARNESS.get(), runtime) {
            runtime.block_on(h.operator.stop());
            runtime.shutdown_timeout(Duration::from_secs(5));
            drop(h.cp.lock().ok().and_then(|mut cp| cp.take()));
        }
    });
}

impl Harness {
    /// A client as `admin`, for the calling test's runtime.
    pub fn admin(&self) -> Client {
        Client::try_from(self.admin.clone()).unwrap()
    }

    /// A client as `admin` that returns a 429 or 503 at once: kube's clients retry those
    /// (honouring `Retry-After`) for minutes, and a refused eviction is a 429.
    pub fn admin_without_retries(&self) -> Client {
        let mut config = self.admin.clone();
        config.default_retry = false;
        Client::try_from(config).unwrap()
    }

    /// A client as `geodb-operator`, with only the RBAC in `config/rbac/`.
    pub fn operator_client(&self) -> Client {
        Client::try_from(self.operator_user.clone()).unwrap()
    }

    pub fn logs_tail(&self, component: &str, n: usize) -> String {
        match self.cp.lock().ok().as_ref().and_then(|cp| cp.as_ref()) {
            Some(cp) => cp.logs_tail(component, n),
            None => String::from("<control plane stopped>"),
        }
    }
}

/// Runs one scenario on the shared harness, in its own namespace when it names one,
/// after the scenarios before it; prints the diagnostics when it fails.
pub async fn run_scenario<F, Fut>(namespace: Option<&str>, body: F)
where
    F: FnOnce(&'static Harness, Client) -> Fut,
    Fut: Future<Output = ()>,
{
    let h = harness().await;
    let _turn = h.turn.lock().await;
    let admin = h.admin();
    if let Some(ns) = namespace {
        create_namespace(&admin, ns).await;
    }
    let t0 = std::time::Instant::now();
    let outcome = AssertUnwindSafe(body(h, admin.clone()))
        .catch_unwind()
        .await;
    eprintln!(
        "---- scenario {}: {:.1}s",
        namespace.unwrap_or("without a namespace"),
        t0.elapsed().as_secs_f64()
    );
    if let Err(panic) = outcome {
        dump_namespace(&admin, h, namespace.unwrap_or("default")).await;
        std::panic::resume_unwind(panic);
    }
}
