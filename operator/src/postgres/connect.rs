//! Connections to one instance, each connect and query bounded by [`TIMEOUT`].

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{NoTls, Socket};
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

async fn open<T>(config: tokio_postgres::Config, tls: T) -> Result<tokio_postgres::Client, PgError>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    match tokio::time::timeout(TIMEOUT, config.connect(tls)).await {
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

/// How the operator logs in to the instances of one GeoDatabase: as the superuser, over
/// TLS that trusts that GeoDatabase's CA only.
#[derive(Clone)]
pub struct Login {
    pub namespace: String,
    password: String,
    ca_pem: String,
    tls: Arc<rustls::ClientConfig>,
}

impl Login {
    pub fn new(namespace: &str, password: &str, ca_pem: &str) -> Result<Self, PgError> {
        Ok(Self {
            namespace: namespace.to_owned(),
            password: password.to_owned(),
            ca_pem: ca_pem.to_owned(),
            tls: super::tls::client_config(ca_pem).map_err(PgError::Connect)?,
        })
    }

    /// The name an instance's certificate holds: its headless Service's.
    pub fn server_name(&self, instance: &str) -> String {
        format!("{instance}.{}.svc", self.namespace)
    }
}

impl PartialEq for Login {
    fn eq(&self, other: &Self) -> bool {
        (&self.namespace, &self.password, &self.ca_pem)
            == (&other.namespace, &other.password, &other.ca_pem)
    }
}

impl std::fmt::Debug for Login {
    // The password never reaches logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Login {{ namespace: {:?}, .. }}", self.namespace)
    }
}

/// A superuser connection to `instance` at `address` (its pod IP) over the pod network,
/// verifying that the server holds a certificate for the instance's name.
pub async fn connect(
    instance: &str,
    address: &str,
    login: &Login,
) -> Result<tokio_postgres::Client, PgError> {
    connect_to(instance, address, login, "postgres").await
}

/// As [`connect`], to `dbname`.
pub async fn connect_to(
    instance: &str,
    address: &str,
    login: &Login,
    dbname: &str,
) -> Result<tokio_postgres::Client, PgError> {
    if address.is_empty() {
        return Err(PgError::NoAddress);
    }
    let mut config = tokio_postgres::Config::new();
    match address.parse::<IpAddr>() {
        Ok(ip) => config.host(login.server_name(instance)).hostaddr(ip),
        Err(_) => config.host(address),
    };
    config
        .port(POSTGRES_PORT as u16)
        .user(SUPERUSER)
        .password(&login.password)
        .dbname(dbname)
        .application_name("geodb-operator")
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .connect_timeout(TIMEOUT);
    open(config, super::tls::VerifyFull(login.tls.clone())).await
}

/// A superuser connection over the local socket in `dir` (peer authentication: the
/// agent runs as the `postgres` user).
pub async fn connect_socket(dir: &Path) -> Result<tokio_postgres::Client, PgError> {
    connect_socket_to(dir, "postgres").await
}

/// [`connect_socket`] to the database `dbname`.
pub async fn connect_socket_to(
    dir: &Path,
    dbname: &str,
) -> Result<tokio_postgres::Client, PgError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(dir)
        .port(POSTGRES_PORT as u16)
        .user(SUPERUSER)
        .dbname(dbname)
        .application_name("geodb-instance");
    open(config, NoTls).await
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
