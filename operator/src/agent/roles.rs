//! The roles' passwords follow the mounted Secrets: when this instance starts as the
//! primary, it sets them over the local socket (peer authentication needs none). So a
//! GeoDatabase created again over kept volumes, or Secrets restored from a backup, work
//! at once. Only SCRAM verifiers are sent, and statement logging and statistics are off
//! in that session, so no password reaches a log or `pg_stat_statements`.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::settings::Settings;
use crate::names::{REPLICATION_USER, SUPERUSER};
use crate::pod_contract::Credential;
use crate::postgres::connect_socket;
use crate::postgres::sql::{ident, literal};

/// How long the agent waits for a starting server to accept connections.
const STARTUP_WAIT: Duration = Duration::from_secs(120);

/// The statements that set every role's password to its SCRAM verifier.
pub fn password_sql(roles: &[(&str, String)]) -> String {
    let mut sql = String::from(
        "SET log_statement = 'none';\n\
         SET log_min_duration_statement = -1;\n\
         SET pg_stat_statements.track = 'none';\n\
         SET pg_stat_statements.track_utility = off;\n",
    );
    for (role, password) in roles {
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        sql.push_str(&format!(
            "ALTER ROLE {} PASSWORD {};\n",
            ident(role),
            literal(&verifier)
        ));
    }
    sql
}

/// Set the passwords of the superuser, replication and application roles from the
/// mounted Secrets, once the server accepts connections. Failures are logged: the roles
/// keep the passwords they had.
pub async fn sync_passwords(settings: Settings) {
    let roles = [
        (SUPERUSER, settings.password(Credential::Superuser)),
        (REPLICATION_USER, settings.password(Credential::Replication)),
        (settings.owner.as_str(), settings.password(Credential::App)),
    ];
    let mut known = Vec::new();
    for (role, password) in roles {
        match password {
            Ok(password) => known.push((role, password)),
            Err(error) => warn!(%error, role, "no mounted password"),
        }
    }
    let started = Instant::now();
    let client = loop {
        match connect_socket(&settings.socket_dir).await {
            Ok(client) => break client,
            Err(_) if started.elapsed() < STARTUP_WAIT => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => {
                warn!(%error, "cannot set the roles' passwords: the server does not answer");
                return;
            }
        }
    };
    match client.batch_execute(&password_sql(&known)).await {
        Ok(()) => info!(
            roles = known.len(),
            "roles' passwords set from the mounted Secrets"
        ),
        Err(error) => warn!(%error, "could not set the roles' passwords"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_verifiers_are_sent_with_logging_off() {
        let sql = password_sql(&[("app", "secret-password".to_owned())]);
        assert!(sql.starts_with("SET log_statement = 'none';"));
        assert!(
            sql.contains("ALTER ROLE \"app\" PASSWORD 'SCRAM-SHA-256$4096:"),
            "{sql}"
        );
        assert!(!sql.contains("secret-password"));
    }
}
