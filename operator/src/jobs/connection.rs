//! The connection of a one-shot Job command: its settings from the environment (the
//! names are the pod contract's, [`crate::pod_contract::env`]) and a connect that waits
//! for a server that is not up yet.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};
use tracing::{debug, warn};

use crate::pod_contract::{env, CA_CERT, TLS_DIR};
use crate::postgres::tls::VerifyFull;

pub const DEFAULT_PORT: u16 = 5432;
pub const DEFAULT_USER: &str = crate::names::SUPERUSER;
/// How long a Job waits for its server (it may start while the Service has no ready
/// endpoint, e.g. during a failover).
pub const CONNECT_WAIT: Duration = Duration::from_secs(120);
const RETRY_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("{0} is not set")]
    MissingEnv(&'static str),
    #[error("{var}: {reason}")]
    InvalidEnv { var: &'static str, reason: String },
    #[error("connecting to {target}: {message}")]
    Connect { target: String, message: String },
}

impl ConnectionError {
    /// A stable label for logs and the outcome line.
    pub fn label(&self) -> &'static str {
        match self {
            ConnectionError::MissingEnv(_) | ConnectionError::InvalidEnv { .. } => "invalid_env",
            ConnectionError::Connect { .. } => "connect",
        }
    }
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// A Unix socket, or `PGSSLMODE=disable`.
    Disable,
    /// The chain against this CA file, the name against the host.
    VerifyFull(PathBuf),
}

/// Where a Job command connects, and as whom.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// A host name or address, or a socket directory (starts with `/`).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
    pub password_file: Option<PathBuf>,
    pub tls: Tls,
    /// The name verify-full checks when it is not `host`: `host` is then only the
    /// address dialled (e.g. a pod or a pooler reached past its Service's name).
    pub server_name: Option<String>,
}

impl std::fmt::Debug for Target {
    // Only where: the password stays in its file.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{}:{}/{}",
            self.user, self.host, self.port, self.database
        )?;
        match &self.server_name {
            Some(name) => write!(f, " (verifying {name})"),
            None => Ok(()),
        }
    }
}

impl Target {
    pub fn from_env() -> Result<Self, ConnectionError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConnectionError> {
        // An empty value counts as unset, as in the other commands' settings.
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let host = get(env::PGHOST).ok_or(ConnectionError::MissingEnv(env::PGHOST))?;
        let port = match get(env::PGPORT) {
            None => DEFAULT_PORT,
            Some(v) => v.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                ConnectionError::InvalidEnv {
                    var: env::PGPORT,
                    reason: format!("{v:?} is not a port number"),
                }
            })?,
        };
        let tls = if host.starts_with('/') {
            Tls::Disable
        } else {
            match get(env::PGSSLMODE).as_deref() {
                None | Some("verify-full") => Tls::VerifyFull(
                    get(env::PGSSLROOTCERT)
                        .map(PathBuf::from)
                        .unwrap_or_else(|| PathBuf::from(format!("{TLS_DIR}/{CA_CERT}"))),
                ),
                Some("disable") => Tls::Disable,
                // The weaker modes check nothing a Job could rely on.
                Some(other) => {
                    return Err(ConnectionError::InvalidEnv {
                        var: env::PGSSLMODE,
                        reason: format!("{other:?}: only verify-full or disable"),
                    })
                }
            }
        };
        // libpq's hostaddr: dial it, check the certificate for PGHOST.
        let (host, server_name) = match get(env::PGHOSTADDR) {
            Some(addr) if !host.starts_with('/') => (addr, Some(host)),
            _ => (host, None),
        };
        Ok(Self {
            host,
            port,
            user: get(env::PGUSER).unwrap_or_else(|| DEFAULT_USER.to_owned()),
            database: get(env::DATABASE).ok_or(ConnectionError::MissingEnv(env::DATABASE))?,
            password_file: get(env::JOB_PASSWORD_FILE).map(PathBuf::from),
            tls,
            server_name,
        })
    }

    fn connect_error(&self, message: impl Into<String>) -> ConnectionError {
        ConnectionError::Connect {
            target: self.to_string(),
            message: message.into(),
        }
    }

    async fn config(
        &self,
        application_name: &str,
    ) -> Result<tokio_postgres::Config, ConnectionError> {
        let mut config = tokio_postgres::Config::new();
        if self.host.starts_with('/') {
            config.host_path(&self.host);
        } else if let Some(name) = &self.server_name {
            // tokio-postgres checks `host` and dials `hostaddr`, which must be an IP.
            config.host(name).hostaddr(self.address().await?);
        } else {
            config.host(&self.host);
        }
        config
            .port(self.port)
            .user(&self.user)
            .dbname(&self.database)
            .application_name(application_name)
            .connect_timeout(Duration::from_secs(10));
        if let Some(path) = &self.password_file {
            let password =
                tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| ConnectionError::InvalidEnv {
                        var: env::JOB_PASSWORD_FILE,
                        reason: format!("{}: {e}", path.display()),
                    })?;
            config.password(password.trim_end_matches(['\n', '\r']));
        }
        if self.tls != Tls::Disable {
            config.ssl_mode(SslMode::Require);
        }
        Ok(config)
    }

    /// `host` as an IP address, resolved when it is a name.
    async fn address(&self) -> Result<std::net::IpAddr, ConnectionError> {
        if let Ok(ip) = self.host.parse() {
            return Ok(ip);
        }
        let mut found = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| self.connect_error(format!("resolving {}: {e}", self.host)))?;
        found
            .next()
            .map(|a| a.ip())
            .ok_or_else(|| self.connect_error(format!("{} has no address", self.host)))
    }

    /// The TLS of the connection, its CA read and checked before the first attempt.
    fn connector(&self) -> Result<Option<VerifyFull>, ConnectionError> {
        let Tls::VerifyFull(ca) = &self.tls else {
            return Ok(None);
        };
        let invalid = |reason| ConnectionError::InvalidEnv {
            var: env::PGSSLROOTCERT,
            reason,
        };
        let pem =
            std::fs::read_to_string(ca).map_err(|e| invalid(format!("{}: {e}", ca.display())))?;
        let config = crate::postgres::tls::client_config(&pem).map_err(invalid)?;
        Ok(Some(VerifyFull(config)))
    }

    /// Connect as `application_name`, retrying what may pass (nothing listens yet, the
    /// server is starting) for `wait`; a refused login or a missing database fails at
    /// once.
    pub async fn connect(
        &self,
        application_name: &str,
        wait: Duration,
    ) -> Result<Client, ConnectionError> {
        let tls = self.connector()?;
        let config = self.config(application_name).await?;
        let started = Instant::now();
        loop {
            match connect_once(&config, tls.clone()).await {
                Ok(client) => return Ok(client),
                Err(error) => {
                    let message = describe(&error);
                    if !retryable(&error) || started.elapsed() >= wait {
                        return Err(self.connect_error(message));
                    }
                    warn!(server = %self, error = %message,
                        "the server does not accept connections yet; retrying");
                }
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }
}

async fn connect_once(
    config: &tokio_postgres::Config,
    tls: Option<VerifyFull>,
) -> Result<Client, tokio_postgres::Error> {
    Ok(match tls {
        None => {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(watch(connection));
            client
        }
        Some(tls) => {
            let (client, connection) = config.connect(tls).await?;
            tokio::spawn(watch(connection));
            client
        }
    })
}

async fn watch<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(error) = connection.await {
        debug!(%error, "PostgreSQL connection closed");
    }
}

/// The error with its source (the server's message) spelled out.
pub fn describe(error: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    if let Some(db) = error.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    match error.source() {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}

/// What may pass by waiting: nothing listens yet, the name does not resolve yet, the
/// server is starting (57P03). A server that answered with any other error, or a
/// certificate that does not check out, means it.
fn retryable(error: &tokio_postgres::Error) -> bool {
    use std::error::Error as _;
    if let Some(code) = error.code() {
        return *code == tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW;
    }
    let io = error
        .source()
        .and_then(|source| source.downcast_ref::<std::io::Error>());
    // rustls reports a refused certificate as invalid data.
    !matches!(
        io.map(std::io::Error::kind),
        Some(std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn target(vars: &[(&str, &str)]) -> Result<Target, ConnectionError> {
        let env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Target::from_lookup(|n| env.get(n).cloned())
    }

    #[test]
    fn defaults_over_tcp_verify_the_server() {
        let t = target(&[(env::PGHOST, "geo-rw.maps.svc"), (env::DATABASE, "app")]).unwrap();
        assert_eq!(t.port, DEFAULT_PORT);
        assert_eq!(t.user, "postgres");
        assert_eq!(t.password_file, None);
        assert_eq!(
            t.tls,
            Tls::VerifyFull(PathBuf::from("/etc/geodb/secrets/tls/ca.crt"))
        );
        assert_eq!(t.to_string(), "postgres@geo-rw.maps.svc:5432/app");
    }

    #[test]
    fn hostaddr_is_dialled_and_the_host_verified() {
        let t = target(&[
            (env::PGHOST, "geo-rw.maps.svc"),
            (env::PGHOSTADDR, "10.96.0.7"),
            (env::DATABASE, "app"),
        ])
        .unwrap();
        assert_eq!(t.host, "10.96.0.7");
        assert_eq!(t.server_name.as_deref(), Some("geo-rw.maps.svc"));
    }

    #[test]
    fn explicit_values() {
        let t = target(&[
            (env::PGHOST, "db"),
            (env::PGPORT, "6432"),
            (env::PGUSER, "app"),
            (env::DATABASE, "maps"),
            (env::JOB_PASSWORD_FILE, "/s/password"),
            (env::PGSSLROOTCERT, "/ca.pem"),
        ])
        .unwrap();
        assert_eq!(t.port, 6432);
        assert_eq!(t.user, "app");
        assert_eq!(t.password_file, Some(PathBuf::from("/s/password")));
        assert_eq!(t.tls, Tls::VerifyFull(PathBuf::from("/ca.pem")));
        let t = target(&[
            (env::PGHOST, "db"),
            (env::DATABASE, "maps"),
            (env::PGSSLMODE, "disable"),
        ])
        .unwrap();
        assert_eq!(t.tls, Tls::Disable);
        // A socket has no TLS, whatever PGSSLMODE says.
        let t = target(&[(env::PGHOST, "/run/pg"), (env::DATABASE, "maps")]).unwrap();
        assert_eq!(t.tls, Tls::Disable);
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        let err = |vars: &[(&str, &str)]| target(vars).unwrap_err().to_string();
        assert_eq!(err(&[(env::DATABASE, "app")]), "PGHOST is not set");
        assert_eq!(err(&[(env::PGHOST, "db")]), "GEODB_DATABASE is not set");
        let base = [(env::PGHOST, "db"), (env::DATABASE, "app")];
        for (var, value) in [
            (env::PGPORT, "0"),
            (env::PGPORT, "x"),
            (env::PGSSLMODE, "require"),
        ] {
            let mut vars = base.to_vec();
            vars.push((var, value));
            let e = target(&vars).unwrap_err();
            assert_eq!(e.label(), "invalid_env");
            assert!(e.to_string().starts_with(var), "{e}");
        }
    }
}
