//! Connections to one instance, each connect and query bounded by [`TIMEOUT`].

use std::path::Path;
use std::time::Duration;

use tokio_postgres::NoTls;
use tracing::debug;

use crate::names::{POSTGRES_PORT, SUPERUSER};

/// Bound of every connect and of every probe query: under the probe interval, so a
/// hung instance never delays the next probe.
pub const TIMEOUT: Duration = Duration::from_millis(900);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgError {
    #[error("no running pod")]
    NoAddress,
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("{0}")]
    Connect(String),
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("{0}")]
    Query(String),
}

impl PgError {
    /// Nothing listens, or the server says it is starting or stopping: PostgreSQL is
    /// not running there, as opposed to a timeout, where it may run behind a broken
    /// network.
    pub fn is_refusal(&self) -> bool {
        match self {
            PgError::NoAddress => true,
            PgError::Connect(message) | PgError::Query(message) => {
                message.contains("Connection refused") || message.contains("the database system is")
            }
            PgError::ConnectTimeout | PgError::Timeout(_) => false,
        }
    }

    /// A query error, with its source (the server's message) spelled out.
    pub fn query(error: &tokio_postgres::Error) -> Self {
        PgError::Query(describe(error))
    }
}

fn describe(error: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    match error.source() {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}

async fn open(config: tokio_postgres::Config) -> Result<tokio_postgres::Client, PgError> {
    match tokio::time::timeout(TIMEOUT, config.connect(NoTls)).await {
        Ok(Ok((client, connection))) => {
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    debug!(%error, "PostgreSQL connection closed");
                }
            });
            Ok(client)
        }
        Ok(Err(error)) => Err(PgError::Connect(describe(&error))),
        Err(_) => Err(PgError::ConnectTimeout),
    }
}

/// A superuser connection to one instance over the pod network.
pub async fn connect(address: &str, password: &str) -> Result<tokio_postgres::Client, PgError> {
    if address.is_empty() {
        return Err(PgError::NoAddress);
    }
    let mut config = tokio_postgres::Config::new();
    config
        .host(address)
        .port(POSTGRES_PORT as u16)
        .user(SUPERUSER)
        .password(password)
        .dbname("postgres")
        .application_name("geodb-operator")
        .connect_timeout(TIMEOUT);
    open(config).await
}

/// A superuser connection over the local socket in `dir` (peer authentication: the
/// agent runs as the `postgres` user).
pub async fn connect_socket(dir: &Path) -> Result<tokio_postgres::Client, PgError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(dir)
        .port(POSTGRES_PORT as u16)
        .user(SUPERUSER)
        .dbname("postgres")
        .application_name("geodb-instance");
    open(config).await
}

/// Run `query` on `client` within [`TIMEOUT`] (or `bound`).
pub async fn bounded<T>(
    what: &'static str,
    bound: Duration,
    query: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, PgError> {
    match tokio::time::timeout(bound, query).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(PgError::query(&error)),
        Err(_) => Err(PgError::Timeout(what)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_from_timeouts() {
        assert!(PgError::Connect(
            "error connecting to server: Connection refused (os error 111)".into()
        )
        .is_refusal());
        assert!(
            PgError::Query("db error: FATAL: the database system is shutting down".into())
                .is_refusal()
        );
        assert!(PgError::NoAddress.is_refusal());
        assert!(!PgError::ConnectTimeout.is_refusal());
    }
}
