//! The `geodb` binary: `geodb operator` runs the controller, `geodb crdgen` writes the CRDs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use geodb::api::GeoDatabase;
use geodb::controller::{self, Context};
use geodb::http::{self, HttpState};
use geodb::leader::LeaderElection;
use geodb::metrics::Metrics;
use geodb::names::INSTANCE_CLUSTER_ROLE;
use kube::CustomResourceExt;
use prometheus_client::registry::Registry;
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(
    name = "geodb",
    version,
    about = "Kubernetes operator for PostGIS clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the GeoDatabase controller.
    Operator(OperatorArgs),
    /// Run inside a database pod: prepare the data directory, then run PostgreSQL.
    Instance,
    /// Write one YAML file per CRD into a directory.
    Crdgen {
        #[arg(long)]
        out_dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct OperatorArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "GEODB_WATCH_NAMESPACE")]
    namespace: Option<String>,
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

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn crdgen(out_dir: &std::path::Path) -> Result<(), String> {
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    for (name, content) in geodb::crdgen::files().map_err(|e| e.to_string())? {
        let path = out_dir.join(name);
        std::fs::write(&path, content).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

async fn operator(args: OperatorArgs) -> Result<(), String> {
    init_tracing(&args.log_format);
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let config = kube::Config::infer()
        .await
        .map_err(|e| format!("no Kubernetes configuration: {e}"))?;
    let client = geodb::kube_client::counting_client(config, metrics.clone())
        .map_err(|e| format!("cannot build a Kubernetes client: {e}"))?;

    let ready = Arc::new(AtomicBool::new(false));
    let state = HttpState {
        registry: Arc::new(registry),
        ready: ready.clone(),
    };
    let addr = args.http_addr;
    tokio::spawn(async move {
        if let Err(e) = http::serve(addr, state).await {
            error!(error = %e, %addr, "HTTP server failed");
            std::process::exit(1);
        }
    });

    // Refuse to start without the CRD: a clear message beats a silent watch error loop.
    let crds: kube::Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        kube::Api::all(client.clone());
    let crd_name = GeoDatabase::crd_name();
    crds.get(crd_name).await.map_err(|e| {
        format!("CRD {crd_name} is not installed or not readable ({e}); install crds/ first")
    })?;
    // Likewise the ClusterRole every GeoDatabase's instance pods are bound to.
    let cluster_roles: kube::Api<k8s_openapi::api::rbac::v1::ClusterRole> =
        kube::Api::all(client.clone());
    cluster_roles.get(INSTANCE_CLUSTER_ROLE).await.map_err(|e| {
        format!(
            "ClusterRole {INSTANCE_CLUSTER_ROLE} is not installed or not readable ({e}); install config/rbac/ first"
        )
    })?;
    ready.store(true, Ordering::Relaxed);

    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("geodb-{}", std::process::id()));
    let ctx = Context::new(client.clone(), metrics, Some(identity.clone()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut held = None;
    if args.leader_elect {
        let election = LeaderElection {
            namespace: args.lease_namespace.clone(),
            name: "geodb-operator-leader".into(),
            identity,
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        };
        election.acquire(&client).await;
        held = Some(election.clone());
        let lease_client = client.clone();
        tokio::spawn(async move {
            let error = election.keep(&lease_client).await;
            // Another replica may be reconciling now: stop at once, the pod restarts.
            error!(%error, "leadership lost; exiting");
            std::process::exit(1);
        });
    }
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(());
    });
    // Serving again only once the watch caches hold their first lists: a standby is ready
    // while it waits for the Lease, the leader once it can reconcile from a full view.
    ready.store(false, Ordering::Relaxed);
    let caches = ctx.caches.clone();
    tokio::spawn(async move {
        caches.ready().await;
        ready.store(true, Ordering::Relaxed);
        info!("watch caches synced");
    });
    let failed = geodb::kube_client::warm_up(&client, geodb::kube_client::WARM_CONNECTIONS).await;
    if failed > 0 {
        warn!(
            failed,
            "some API server connections could not be opened ahead of time"
        );
    }
    info!(namespace = ?args.namespace, "starting controller");
    controller::run(ctx, args.namespace, async move {
        let _ = stop_rx.await;
    })
    .await;
    info!("controller stopped");
    if let Some(election) = held {
        election.release(&client).await;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crdgen { out_dir } => crdgen(&out_dir),
        Command::Instance => {
            init_tracing("json");
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|rt| {
                    rt.block_on(async {
                        let settings =
                            geodb::instance::Settings::from_env().map_err(|e| e.to_string())?;
                        let status = geodb::instance::run_instance(settings)
                            .await
                            .map_err(|e| e.to_string())?;
                        if status.success() {
                            Ok(())
                        } else {
                            Err(format!("PostgreSQL exited: {status}"))
                        }
                    })
                })
        }
        Command::Operator(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(operator(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("geodb: {message}");
            ExitCode::FAILURE
        }
    }
}
