//! PgBouncer's admin console, reached over its Unix socket as the pod's own OS user
//! (`peer`; TCP logins as that user are rejected), and the supervisor's control endpoint
//! the operator calls after a role change, its readiness check and its metrics.

use std::future::IntoFuture as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::RawQuery;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;

use super::metrics::{render, Row, Scrape};
use super::upstream::Upstream;
use crate::runtime::exposition::rows_of;

/// Where PgBouncer's Unix socket lives (an emptyDir: the root filesystem is read-only).
pub const SOCKET_DIR: &str = "/var/run/pgbouncer";
/// The console's user: the pod's OS user, so `peer` admits the supervisor only.
pub const ADMIN_USER: &str = "postgres";
/// The supervisor's HTTP port (the operator's: it pauses and reconnects PgBouncer).
pub const CONTROL_PORT: i32 = 8010;
/// `/metrics` alone, for Prometheus: a scraper admitted here cannot pause the pooler.
pub const METRICS_PORT: i32 = 9127;
/// `POST` here: close server connections once released, so new ones reach the instances
/// that now hold the role; with `?primary=<host>` (the read-write pooler, once a primary is
/// confirmed) first wait until the `-rw` Service reaches it (see `primary`), then resume a
/// paused PgBouncer.
pub const RECONNECT_PATH: &str = "/reconnect";
/// `POST` here before a switchover: PgBouncer's `PAUSE` (transactions under way finish,
/// new ones wait); 200 once no server connection is left.
pub const PAUSE_PATH: &str = "/pause";
/// `GET` here: 200 when PgBouncer answers on its console (the pod's readiness).
pub const READY_PATH: &str = "/readyz";
/// `GET` here: PgBouncer's pools, stats and lists for Prometheus.
pub const METRICS_PATH: &str = "/metrics";

/// When a reconnect is repeated after the request: kube-proxy applies the Service's new
/// endpoints a moment after the labels change, and a connection opened in between may
/// still reach the old instance.
const AGAIN_AFTER: [Duration; 3] = [
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
];

/// How long `/pause` waits for transactions under way to finish before answering 504
/// (the pause goes on: the switchover decides).
const PAUSE_WAIT: Duration = Duration::from_secs(5);
/// A pause nobody ended (an operator lost in the middle of a switchover) ends by itself
/// after this: clients wait, they do not wait forever.
const PAUSE_LIMIT: Duration = Duration::from_secs(30);

/// What the control endpoint's handlers share.
struct Control {
    port: u16,
    upstream: Arc<Upstream>,
    /// Counts pauses and resumes: a pause's own timer resumes only if nothing came after.
    turns: AtomicU64,
}

/// Run one command on the console.
pub async fn command(port: u16, sql: &str) -> Result<(), tokio_postgres::Error> {
    rows(port, &[sql]).await.map(|_| ())
}

/// The rows each of `commands` answers, on one console session.
pub async fn rows(port: u16, commands: &[&str]) -> Result<Vec<Vec<Row>>, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(SOCKET_DIR)
        .port(port)
        .user(ADMIN_USER)
        .dbname("pgbouncer")
        .connect_timeout(Duration::from_secs(2));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let mut answers = Vec::new();
    for sql in commands {
        let messages = match client.simple_query(sql).await {
            Ok(messages) => messages,
            Err(e) => {
                drop(client);
                let _ = driver.await;
                return Err(e);
            }
        };
        answers.push(rows_of(&messages));
    }
    drop(client);
    let _ = driver.await;
    Ok(answers)
}

async fn metrics(port: u16) -> String {
    let answered = rows(port, &["SHOW POOLS", "SHOW STATS", "SHOW LISTS"]).await;
    let scrape = answered.ok().and_then(|mut a| {
        let lists = a.pop()?;
        let stats = a.pop()?;
        let pools = a.pop()?;
        Some(Scrape {
            pools,
            stats,
            lists,
        })
    });
    render(scrape.as_ref())
}

/// The `primary=` value of a query string.
fn primary_of(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("primary="))
        .filter(|v| !v.is_empty())
}

async fn reconnect(control: Arc<Control>, query: Option<String>) -> StatusCode {
    let port = control.port;
    let Some(host) = primary_of(query.as_deref()) else {
        // A role moved with no primary confirmed yet (a failover under way): close what
        // may reach the wrong instance, and stay paused if paused.
        if let Err(e) = command(port, "RECONNECT").await {
            tracing::warn!(error = %e, "RECONNECT on PgBouncer's console");
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        tracing::info!(
            event = "reconnect",
            "server connections closed once released"
        );
        tokio::spawn(async move {
            for wait in AGAIN_AFTER {
                tokio::time::sleep(wait).await;
                if let Err(e) = command(port, "RECONNECT").await {
                    tracing::warn!(error = %e, "repeating RECONNECT");
                }
            }
        });
        return StatusCode::OK;
    };
    // A primary is confirmed: once the -rw Service reaches it, reconnect and resume
    // (ending a switchover's pause). Detached from the request, which the operator does
    // not hold open that long; never longer than `primary::WAIT`: past it, clients are
    // let through anyway.
    control.turns.fetch_add(1, Ordering::SeqCst);
    let (host, service) = (host.to_owned(), control.upstream.fallback());
    tokio::spawn(async move {
        let reached = match &service {
            Some(service) => super::primary::wait_writable(service).await,
            None => Err("no -rw host in the configuration".to_owned()),
        };
        if let Err(e) = &reached {
            tracing::warn!(primary = %host, error = %e, "resuming without seeing the primary through the Service");
        }
        if let Err(e) = rows(port, &["RECONNECT"]).await {
            tracing::warn!(error = %e, "RECONNECT on PgBouncer's console");
        }
        // Not paused is the usual case, and RESUME then only says so.
        let resumed = command(port, "RESUME").await.is_ok();
        tracing::info!(
            event = "reconnect",
            primary = %host,
            resumed,
            waited_ms = reached.map(|d| d.as_millis() as u64).unwrap_or_default(),
            "server connections closed once released; the -rw Service reaches the primary"
        );
    });
    StatusCode::ACCEPTED
}

async fn pause(control: Arc<Control>) -> StatusCode {
    let port = control.port;
    let turn = control.turns.fetch_add(1, Ordering::SeqCst) + 1;
    let timer = control.clone();
    tokio::spawn(async move {
        tokio::time::sleep(PAUSE_LIMIT).await;
        if timer.turns.load(Ordering::SeqCst) == turn && command(port, "RESUME").await.is_ok() {
            tracing::warn!(event = "resume", "a pause nobody ended: resumed");
        }
    });
    match tokio::time::timeout(PAUSE_WAIT, command(port, "PAUSE")).await {
        Ok(Ok(())) => {
            tracing::info!(event = "pause", "paused: no server connection left");
            StatusCode::OK
        }
        // Asked twice (an operator retrying): already paused is paused.
        Ok(Err(e)) if e.to_string().contains("already") => StatusCode::OK,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "PAUSE on PgBouncer's console");
            StatusCode::SERVICE_UNAVAILABLE
        }
        Err(_) => {
            tracing::warn!(
                event = "pause",
                "transactions still under way after the wait"
            );
            StatusCode::GATEWAY_TIMEOUT
        }
    }
}

async fn ready(port: u16) -> StatusCode {
    match command(port, "SHOW VERSION").await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Serve the control endpoint for PgBouncer listening on `pooler_port`.
pub async fn serve(pooler_port: u16, upstream: Arc<Upstream>) -> std::io::Result<()> {
    let port = u16::try_from(CONTROL_PORT).unwrap_or(8010);
    let control = Arc::new(Control {
        port: pooler_port,
        upstream,
        turns: AtomicU64::new(0),
    });
    let paused = control.clone();
    let router = Router::new()
        .route(
            RECONNECT_PATH,
            post(move |RawQuery(query): RawQuery| reconnect(control.clone(), query)),
        )
        .route(PAUSE_PATH, post(move || pause(paused.clone())))
        .route(
            READY_PATH,
            get(move || async move { ready(pooler_port).await }),
        )
        .route(
            METRICS_PATH,
            get(move || async move { metrics(pooler_port).await }),
        );
    let scrape = Router::new().route(
        METRICS_PATH,
        get(move || async move { metrics(pooler_port).await }),
    );
    let metrics_port = u16::try_from(METRICS_PORT).unwrap_or(9127);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    let metrics_listener =
        tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], metrics_port))).await?;
    tokio::try_join!(
        axum::serve(listener, router).into_future(),
        axum::serve(metrics_listener, scrape).into_future()
    )
    .map(drop)
}
