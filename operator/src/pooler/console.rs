//! PgBouncer's admin console, reached over its Unix socket as the pod's own OS user
//! (`peer`; TCP logins as that user are rejected), and the supervisor's control endpoint
//! the operator calls after a role change, its readiness check and its metrics.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use tokio_postgres::SimpleQueryMessage;

use super::metrics::{render, Row, Scrape};

/// Where PgBouncer's Unix socket lives (an emptyDir: the root filesystem is read-only).
pub const SOCKET_DIR: &str = "/var/run/pgbouncer";
/// The console's user: the pod's OS user, so `peer` admits the supervisor only.
pub const ADMIN_USER: &str = "postgres";
/// The supervisor's HTTP port.
pub const CONTROL_PORT: i32 = 8010;
/// `POST` here: close server connections once released, so new ones follow the Service
/// to the instances that now hold the role.
pub const RECONNECT_PATH: &str = "/reconnect";
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
        answers.push(
            messages
                .iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(row) => Some(
                        row.columns()
                            .iter()
                            .enumerate()
                            .filter_map(|(i, c)| {
                                Some((c.name().to_owned(), row.get(i)?.to_owned()))
                            })
                            .collect(),
                    ),
                    _ => None,
                })
                .collect(),
        );
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

async fn reconnect(port: u16) -> StatusCode {
    match command(port, "RECONNECT").await {
        Ok(()) => {
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
            StatusCode::OK
        }
        Err(e) => {
            tracing::warn!(error = %e, "RECONNECT on PgBouncer's console");
            StatusCode::SERVICE_UNAVAILABLE
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
pub async fn serve(pooler_port: u16) -> std::io::Result<()> {
    let port = u16::try_from(CONTROL_PORT).unwrap_or(8010);
    let router = Router::new()
        .route(
            RECONNECT_PATH,
            post(move || async move { reconnect(pooler_port).await }),
        )
        .route(
            READY_PATH,
            get(move || async move { ready(pooler_port).await }),
        )
        .route(
            METRICS_PATH,
            get(move || async move { metrics(pooler_port).await }),
        );
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    axum::serve(listener, router).await
}
