//! PgBouncer's admin console, reached over its Unix socket as the pod's own OS user
//! (`peer`; TCP logins as that user are rejected), and the supervisor's control endpoint
//! the operator calls after a role change.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;

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
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(SOCKET_DIR)
        .port(port)
        .user(ADMIN_USER)
        .dbname("pgbouncer")
        .connect_timeout(Duration::from_secs(2));
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let outcome = client.simple_query(sql).await.map(|_| ());
    drop(client);
    let _ = driver.await;
    outcome
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
        );
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    axum::serve(listener, router).await
}
