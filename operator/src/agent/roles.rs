//! The roles' passwords follow the mounted Secrets: when this instance runs as the
//! primary (started so, or promoted), it sets them over the local socket (peer
//! authentication needs none). So a
//! GeoDatabase created again over kept volumes, or Secrets restored from a backup, work
//! at once. Only SCRAM verifiers are sent, and statement logging and statistics are off
//! in that session, so no password reaches a log or `pg_stat_statements`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::settings::Settings;
use crate::names::{POOLER_LOOKUP, POOLER_USER, REPLICATION_USER, SUPERUSER};
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

/// See [`lookup_role_sql`]: run in every database (`template1` included, for those to
/// come). It lives in `pg_catalog` with the default privileges, so `pg_dump` carries
/// nothing of it and a dump restores into any server; it answers only a session of the
/// lookup role (`session_user` cannot be changed by `SET ROLE`).
pub fn lookup_function_sql() -> String {
    format!(
        "CREATE OR REPLACE FUNCTION {POOLER_LOOKUP}(p_user text, OUT usename name, OUT passwd text)\n\
         RETURNS record LANGUAGE sql STABLE SECURITY DEFINER\n\
         SET search_path = pg_catalog, pg_temp AS $f$\n\
           SELECT a.rolname, a.rolpassword FROM pg_catalog.pg_authid a\n\
            WHERE session_user = {name} AND a.rolname = p_user AND a.rolcanlogin\n\
              AND NOT a.rolsuper AND NOT a.rolreplication AND a.rolname <> {name}\n\
              AND (a.rolvaliduntil IS NULL OR a.rolvaliduntil > now())\n\
         $f$;\n",
        name = literal(POOLER_USER)
    )
}

/// How often the primary's agent looks for databases made since (one from `template0`,
/// as `pg_restore --create` makes, lacks the lookup until then).
const LOOKUP_RECHECK: Duration = Duration::from_secs(10);

/// Install the lookup function in every database that takes connections and is not in
/// `done` (their oids); the ones installed are added.
async fn install_lookup(
    settings: &Settings,
    client: &tokio_postgres::Client,
    done: &mut HashSet<u32>,
) -> Result<(), tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT oid, datname FROM pg_catalog.pg_database WHERE datallowconn",
            &[],
        )
        .await?;
    let sql = lookup_function_sql();
    for row in rows {
        let (oid, database): (u32, String) = (row.get(0), row.get(1));
        if done.contains(&oid) {
            continue;
        }
        let installed = match connect_socket_to(&settings.socket_dir, &database).await {
            Ok(db) => db.batch_execute(&sql).await.map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match installed {
            Ok(()) => {
                done.insert(oid);
            }
            Err(error) => warn!(%error, %database, "installing the pooler's lookup function"),
        }
    }
    Ok(())
}

/// The roles follow the Secrets: passwords set, the pooler's lookup role and function
/// in place; then, while this instance stays the primary, databases made later get the
/// function too. Failures are logged: the roles keep what they had.
pub async fn sync(settings: Settings) {
    let Some(client) = sync_passwords(&settings).await else {
        return;
    };
    let mut done = HashSet::new();
    while !settings.is_standby() {
        if let Err(error) = install_lookup(&settings, &client, &mut done).await {
            warn!(%error, "listing databases for the pooler's lookup");
            if client.is_closed() {
                return;
            }
        }
        tokio::time::sleep(LOOKUP_RECHECK).await;
    }
}

/// The roles of `known` whose stored verifier is not of their mounted password (all of
/// them when the verifiers cannot be read).
async fn stale_roles<'a>(
    client: &tokio_postgres::Client,
    known: Vec<(&'a str, String)>,
) -> Vec<(&'a str, String)> {
    let names: Vec<&str> = known.iter().map(|(role, _)| *role).collect();
    let stored = match client
        .query(
            "SELECT rolname::text, rolpassword FROM pg_catalog.pg_authid WHERE rolname = ANY($1)",
            &[&names],
        )
        .await
    {
        Ok(rows) => rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, Option<String>>(1)))
            .collect::<Vec<_>>(),
        Err(error) => {
            warn!(%error, "reading the roles' verifiers");
            Vec::new()
        }
    };
    known
        .into_iter()
        .filter(|(role, password)| {
            !stored.iter().any(|(name, verifier)| {
                name == role
                    && verifier
                        .as_deref()
                        .is_some_and(|v| super::scram::verifies(v, password))
            })
        })
        .collect()
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
    if let Err(error) = client.batch_execute(&lookup_role_sql()).await {
        warn!(%error, "could not create the pooler's lookup role");
    }
    let stale = stale_roles(&client, known).await;
    if stale.is_empty() {
        info!("roles' passwords already match the mounted Secrets");
        return Some(client);
    }
    match client.batch_execute(&password_sql(&stale)).await {
        Ok(()) => info!(
            roles = stale.len(),
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
        assert!(sql.contains("session_user = 'geodb_pooler'"));
        // Default privileges: nothing of it travels in a dump.
        assert!(!sql.contains("GRANT") && !sql.contains("REVOKE"));
        assert!(lookup_role_sql().contains("CREATE ROLE \"geodb_pooler\" LOGIN NOINHERIT"));
    }
}
