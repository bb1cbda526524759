//! `geodb operator`: the HTTP endpoints, the prerequisites check, leader election, the
//! warm-up of API connections, then the controller until a stop signal.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use geodb::api::GeoDatabase;
use geodb::controller::{self, Context};
use geodb::names::INSTANCE_CLUSTER_ROLE;
use geodb::runtime::http::{self, HttpState};
use geodb::runtime::kube_client::{counting_client, warm_up, WARM_CONNECTIONS};
use geodb::runtime::leader::LeaderElection;
use geodb::runtime::metrics::Metrics;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client, CustomResourceExt};
use prometheus_client::registry::Registry;
use tracing::{error, info, warn};

use super::init_tracing;

#[derive(clap::Args)]
pub struct OperatorArgs {
    /// Watch only these namespaces (comma-separated or repeated; default: all). With a
    /// list, the operator needs no cluster-wide permission: checks that would read
    /// cluster-scoped objects are skipped when RBAC forbids them.
    #[arg(long, env = "GEODB_WATCH_NAMESPACE", value_delimiter = ',')]
    namespace: Vec<String>,
    /// Image prefixes a GeoDatabase may run (comma-separated; default: any image).
    #[arg(long, env = "GEODB_ALLOWED_IMAGES", value_delimiter = ',')]
    allowed_images: Vec<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Take a Lease before reconciling, so several replicas can run.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the leader Lease (default: the operator pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "geodb-system")]
    lease_namespace: String,
    /// Identity in the Lease (default: the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log format: json or text.
    #[arg(long, default_value = "json")]
    log_format: String,
}

pub fn run(args: OperatorArgs) -> Result<(), String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(operator(args))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
        return;
    }
    let _ = ctrl_c.await;
}

/// Serve `/metrics`, `/healthz` and `/readyz`; a server that cannot bind ends the process.
fn serve_http(addr: SocketAddr, registry: Registry, ready: Arc<AtomicBool>) {
    let state = HttpState {
        registry: Arc::new(registry),
        ready,
    };
    tokio::spawn(async move {
        if let Err(e) = http::serve(addr, state).await {
            error!(error = %e, %addr, "HTTP server failed");
            std::process::exit(1);
        }
    });
}

/// Refuse to start without the CRD and the instances' ClusterRole: a clear message beats
/// a silent watch error loop. An operator confined to namespaces may not read
/// cluster-scoped objects: then the checks are skipped, and said so.
async fn check_prerequisites(client: &Client, namespaced: bool) -> Result<(), String> {
    let crd_name = GeoDatabase::crd_name();
    let crd = Api::<CustomResourceDefinition>::all(client.clone())
        .get(crd_name)
        .await
        .map(drop);
    unless_forbidden(crd, namespaced, || {
        format!("CRD {crd_name} is not installed or not readable; install crds/ first")
    })?;
    let role = Api::<ClusterRole>::all(client.clone())
        .get(INSTANCE_CLUSTER_ROLE)
        .await
        .map(drop);
    unless_forbidden(role, namespaced, || {
        format!("ClusterRole {INSTANCE_CLUSTER_ROLE} is not installed or not readable; install config/rbac/ first")
    })
}

fn unless_forbidden(
    result: kube::Result<()>,
    namespaced: bool,
    message: impl Fn() -> String,
) -> Result<(), String> {
    match result {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(status)) if namespaced && status.code == 403 => {
            warn!(
                reason = %status.message,
                "not checked (no cluster-wide read permission): {}",
                message()
            );
            Ok(())
        }
        Err(e) => Err(format!("{} ({e})", message())),
    }
}

/// Take the leader Lease, and keep it: a leader that loses it exits at once (the pod
/// restarts), since another replica may be reconciling.
async fn lead(client: &Client, namespace: String, identity: String) -> LeaderElection {
    let election = LeaderElection {
        namespace,
        name: "geodb-operator-leader".into(),
        identity,
        lease_duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(2),
    };
    election.acquire(client).await;
    let (kept, lease_client) = (election.clone(), client.clone());
    tokio::spawn(async move {
        let error = kept.keep(&lease_client).await;
        error!(%error, "leadership lost; exiting");
        std::process::exit(1);
    });
    election
}

async fn operator(args: OperatorArgs) -> Result<(), String> {
    init_tracing(&args.log_format);
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let config = kube::Config::infer()
        .await
        .map_err(|e| format!("no Kubernetes configuration: {e}"))?;
    let client = counting_client(config, metrics.clone())
        .map_err(|e| format!("cannot build a Kubernetes client: {e}"))?;
    let ready = Arc::new(AtomicBool::new(false));
    serve_http(args.http_addr, registry, ready.clone());
    check_prerequisites(&client, !args.namespace.is_empty()).await?;
    ready.store(true, Ordering::Relaxed);

    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("geodb-{}", std::process::id()));
    // One controller per watched namespace (kube watches one namespace or all), each
    // with its own caches, sharing the client and the metrics.
    let namespaces: Vec<Option<String>> = match args.namespace.is_empty() {
        true => vec![None],
        false => args.namespace.iter().cloned().map(Some).collect(),
    };
    let contexts: Vec<Arc<Context>> = namespaces
        .iter()
        .map(|_| {
            Context::for_installation(
                client.clone(),
                metrics.clone(),
                Some(identity.clone()),
                controller::policy::Installation {
                    allowed_images: args.allowed_images.clone(),
                    operator_namespace: Some(args.lease_namespace.clone()),
                },
            )
        })
        .collect();
    let held = match args.leader_elect {
        true => Some(lead(&client, args.lease_namespace.clone(), identity).await),
        false => None,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    // Serving again only once the watch caches hold their first lists: a standby is ready
    // while it waits for the Lease, the leader once it can reconcile from a full view.
    ready.store(false, Ordering::Relaxed);
    let caches: Vec<_> = contexts.iter().map(|c| c.caches.clone()).collect();
    tokio::spawn(async move {
        for cache in caches {
            cache.ready().await;
        }
        ready.store(true, Ordering::Relaxed);
        info!("watch caches synced");
    });
    let failed = warm_up(&client, WARM_CONNECTIONS).await;
    if failed > 0 {
        warn!(
            failed,
            "some API server connections could not be opened ahead of time"
        );
    }
    info!(namespaces = ?args.namespace, "starting controller");
    let runs = contexts
        .into_iter()
        .zip(namespaces)
        .map(|(ctx, namespace)| {
            let mut stop = stop_rx.clone();
            controller::run(ctx, namespace, async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            })
        });
    futures::future::join_all(runs).await;
    info!("controller stopped");
    if let Some(election) = held {
        election.release(&client).await;
    }
    Ok(())
}
