//! PgBouncer's admin console, reached over its Unix socket as the pod's own OS user
//! (`peer`; TCP logins as that user are rejected), and the supervisor's control endpoint
//! the operator calls after a role change, its readiness check and its metrics.

use std::future::IntoFuture as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::RawQuery;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;

use super::control::{pause, reconnect, Control};
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
/// confirmed) pin new server connections to that instance's Service once it answers as a
/// primary (see `primary`), then resume a paused PgBouncer (see `control`).
pub const RECONNECT_PATH: &str = "/reconnect";
/// `POST` here before a switchover: PgBouncer's `PAUSE` (transactions under way finish,
/// new ones wait); 200 once no server connection is left.
pub const PAUSE_PATH: &str = "/pause";
/// `GET` here: 200 when PgBouncer answers on its console (the pod's readiness).
pub const READY_PATH: &str = "/readyz";
/// `GET` here: PgBouncer's pools, stats and lists for Prometheus.
pub const METRICS_PATH: &str = "/metrics";

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

async fn ready(port: u16) -> StatusCode {
    match command(port, "SHOW VERSION").await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Serve the control endpoint for PgBouncer listening on `pooler_port`.
pub async fn serve(pooler_port: u16, upstream: Arc<Upstream>) -> std::io::Result<()> {
    let port = u16::try_from(CONTROL_PORT).unwrap_or(8010);
    let control = Arc::new(Control::new(pooler_port, upstream));
    let paused = control.clone();
    let router = Router::new()
        .route(
            RECONNECT_PATH,
            post(move |headers: HeaderMap, RawQuery(query): RawQuery| {
                reconnect(control.clone(), headers, query)
            }),
        )
        .route(
            PAUSE_PATH,
            post(move |headers: HeaderMap| pause(paused.clone(), headers)),
        )
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
