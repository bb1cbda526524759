//! The roles' passwords follow the mounted Secrets: when this instance runs as the
//! primary (started so, or promoted), it sets them over the local socket (peer
//! authentication needs none). So a
//! GeoDatabase created again over kept volumes, or Secrets restored from a backup, work
//! at once. Only SCRAM verifiers are sent, and statement logging and statistics are off
//! in that session, so no password reaches a log or `pg_stat_statements`.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::settings::Settings;
use crate::names::{POOLER_USER, REPLICATION_USER, SUPERUSER};
use crate::pod_contract::Credential;
use crate::postgres::sql::{ident, literal};
use crate::postgres::{connect_socket, connect_socket_to};

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

/// The pooler's lookup role, and in each database a function that hands PgBouncer the
/// SCRAM verifier of a login role, refusing superusers, replication roles and itself.
/// `SECURITY DEFINER` with a pinned `search_path`; only the lookup role may call it.
pub fn lookup_role_sql() -> String {
    format!(
        "DO $$ BEGIN\n\
           IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {role}) THEN\n\
             CREATE ROLE {ident} LOGIN NOINHERIT;\n\
           END IF;\n\
         END $$;\n",
        role = literal(POOLER_USER),
        ident = ident(POOLER_USER)
    )
}

/// See [`lookup_role_sql`]: run in every database (and `template1`, for those to come).
pub fn lookup_function_sql() -> String {
    let role = ident(POOLER_USER);
    format!(
        "CREATE SCHEMA IF NOT EXISTS geodb_pooler;\n\
         REVOKE ALL ON SCHEMA geodb_pooler FROM PUBLIC;\n\
         GRANT USAGE ON SCHEMA geodb_pooler TO {role};\n\
         CREATE OR REPLACE FUNCTION geodb_pooler.lookup(p_user text, OUT usename name, OUT passwd text)\n\
         RETURNS record LANGUAGE sql STABLE SECURITY DEFINER\n\
         SET search_path = pg_catalog, pg_temp AS $f$\n\
           SELECT a.rolname, a.rolpassword FROM pg_catalog.pg_authid a\n\
            WHERE a.rolname = p_user AND a.rolcanlogin AND NOT a.rolsuper\n\
              AND NOT a.rolreplication AND a.rolname <> {name}\n\
              AND (a.rolvaliduntil IS NULL OR a.rolvaliduntil > now())\n\
         $f$;\n\
         REVOKE ALL ON FUNCTION geodb_pooler.lookup(text) FROM PUBLIC;\n\
         GRANT EXECUTE ON FUNCTION geodb_pooler.lookup(text) TO {role};\n",
        name = literal(POOLER_USER)
    )
}

/// Install the lookup function in every database that takes connections.
async fn install_lookup(settings: &Settings, client: &tokio_postgres::Client) {
    let databases: Vec<String> = match client
        .query(
            "SELECT datname FROM pg_catalog.pg_database WHERE datallowconn",
            &[],
        )
        .await
    {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(error) => {
            warn!(%error, "listing databases for the pooler's lookup");
            return;
        }
    };
    let sql = lookup_function_sql();
    for database in databases {
        let done = match connect_socket_to(&settings.socket_dir, &database).await {
            Ok(db) => db.batch_execute(&sql).await.map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        if let Err(error) = done {
            warn!(%error, %database, "installing the pooler's lookup function");
        }
    }
}

/// The roles follow the Secrets: passwords set, the pooler's lookup role and function
/// in place. Failures are logged: the roles keep what they had.
pub async fn sync(settings: Settings) {
    let Some(client) = sync_passwords(&settings).await else {
        return;
    };
    install_lookup(&settings, &client).await;
}

/// Set the passwords of the superuser, replication, application and pooler lookup roles
/// from the mounted Secrets (creating the lookup role first), once the server accepts
/// connections; the session, for what follows.
async fn sync_passwords(settings: &Settings) -> Option<tokio_postgres::Client> {
    let roles = [
        (SUPERUSER, settings.password(Credential::Superuser)),
        (REPLICATION_USER, settings.password(Credential::Replication)),
        (settings.owner.as_str(), settings.password(Credential::App)),
        (POOLER_USER, settings.password(Credential::Pooler)),
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
                return None;
            }
        }
    };
    let sql = lookup_role_sql() + &password_sql(&known);
    match client.batch_execute(&sql).await {
        Ok(()) => info!(
            roles = known.len(),
            "roles' passwords set from the mounted Secrets"
        ),
        Err(error) => warn!(%error, "could not set the roles' passwords"),
    }
    Some(client)
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

    #[test]
    fn the_lookup_refuses_privileged_roles_and_is_pinned() {
        let sql = lookup_function_sql();
        assert!(sql.contains("SECURITY DEFINER"));
        assert!(sql.contains("SET search_path = pg_catalog, pg_temp"));
        assert!(sql.contains("NOT a.rolsuper"));
        assert!(sql.contains("NOT a.rolreplication"));
        assert!(sql.contains("a.rolname <> 'geodb_pooler'"));
        assert!(sql.contains("REVOKE ALL ON FUNCTION geodb_pooler.lookup(text) FROM PUBLIC"));
        assert!(lookup_role_sql().contains("CREATE ROLE \"geodb_pooler\" LOGIN NOINHERIT"));
    }
}
