//! A new cluster: initdb on the bootstrap instance, then the roles, the application
//! database and its extensions.

use std::path::Path;

use super::command::run;
use super::error::{AgentError, Result};
use super::settings::Settings;
use crate::names::{REPLICATION_USER, SUPERUSER};
use crate::pod_contract::{Credential, POSTGRESQL_CONF};
use crate::postgres::sql::{ident, literal};

/// How an empty data directory gets its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// The data directory already holds a cluster.
    Existing,
    /// A brand-new cluster: this instance runs initdb.
    Initdb,
    /// A brand-new cluster from another's backups: this instance restores and replays.
    Recover,
    /// Copy the primary with pg_basebackup and follow it.
    Clone,
}

/// Only the bootstrap instance of a cluster that never ran creates a new database; every
/// other empty instance clones the primary, so a lost volume never becomes a second,
/// empty primary.
pub fn bootstrap_mode(
    has_data: bool,
    is_bootstrap_instance: bool,
    bootstrapped: bool,
    recovering: bool,
) -> Bootstrap {
    match (has_data, is_bootstrap_instance && !bootstrapped, recovering) {
        (true, _, _) => Bootstrap::Existing,
        (false, true, false) => Bootstrap::Initdb,
        (false, true, true) => Bootstrap::Recover,
        (false, false, _) => Bootstrap::Clone,
    }
}

/// Statements run once on a new cluster. Statement logging is off in the session so the
/// passwords never reach the server log.
pub fn bootstrap_sql(
    owner: &str,
    database: &str,
    app_password: &str,
    replication_password: &str,
) -> String {
    format!(
        "SET log_statement = 'none';\n\
         SET log_min_duration_statement = -1;\n\
         SET password_encryption = 'scram-sha-256';\n\
         CREATE ROLE {repl} WITH REPLICATION LOGIN PASSWORD {repl_pw};\n\
         CREATE ROLE {owner_id} WITH LOGIN PASSWORD {app_pw};\n\
         CREATE DATABASE {db} OWNER {owner_id};\n",
        repl = ident(REPLICATION_USER),
        repl_pw = literal(replication_password),
        owner_id = ident(owner),
        app_pw = literal(app_password),
        db = ident(database),
    )
}

/// Extensions every application database gets.
pub const EXTENSIONS_SQL: &str = "CREATE EXTENSION IF NOT EXISTS postgis;\n\
     CREATE EXTENSION IF NOT EXISTS pg_stat_statements;\n";

/// `config_file=...` for PostgreSQL's command line.
pub fn conf_arg(settings: &Settings) -> String {
    format!(
        "config_file={}",
        settings.config_dir.join(POSTGRESQL_CONF).display()
    )
}

/// `pg_ctl -o` options of a server that only the agent reaches (through the socket)
/// while it sets the data directory up. No replica exists then: commits must not wait
/// for one (synchronous mode).
pub fn socket_only_options(settings: &Settings) -> String {
    format!(
        "-c {} -c listen_addresses='' -c unix_socket_directories={} -c synchronous_standby_names=''",
        conf_arg(settings),
        settings.socket_dir.display()
    )
}

/// initdb with SCRAM and checksums, then roles, database and extensions on a server
/// that listens on the socket only.
pub fn initdb(settings: &Settings, bin: &Path) -> Result<()> {
    let pwfile = std::env::temp_dir().join("geodb-superuser-password");
    std::fs::write(&pwfile, settings.password(Credential::Superuser)?)
        .map_err(AgentError::io(&pwfile))?;
    let pgdata = settings.pgdata.display().to_string();
    let result = run(
        bin,
        "initdb",
        &[
            "-D",
            &pgdata,
            "--username",
            SUPERUSER,
            "--pwfile",
            &pwfile.display().to_string(),
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--data-checksums",
        ],
        None,
    );
    let _ = std::fs::remove_file(&pwfile);
    result?;
    let socket = settings.socket_dir.display().to_string();
    let options = socket_only_options(settings);
    run(
        bin,
        "pg_ctl",
        &["-D", &pgdata, "-o", &options, "-w", "-t", "300", "start"],
        None,
    )?;
    let outcome = create_roles_and_database(settings, bin, &socket);
    run(
        bin,
        "pg_ctl",
        &["-D", &pgdata, "-m", "fast", "-w", "stop"],
        None,
    )?;
    outcome
}

/// Statements fed to `psql` as the superuser over the socket, stopping at the first error.
pub fn psql_socket(bin: &Path, socket: &str, db: &str, input: &str) -> Result<()> {
    run(
        bin,
        "psql",
        &[
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-h",
            socket,
            "-U",
            SUPERUSER,
            "-d",
            db,
        ],
        Some(input),
    )
}

fn create_roles_and_database(settings: &Settings, bin: &Path, socket: &str) -> Result<()> {
    let sql = bootstrap_sql(
        &settings.owner,
        &settings.database,
        &settings.password(Credential::App)?,
        &settings.password(Credential::Replication)?,
    );
    psql_socket(bin, socket, "postgres", &sql)?;
    psql_socket(bin, socket, &settings.database, EXTENSIONS_SQL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_new_bootstrap_instance_runs_initdb() {
        assert_eq!(bootstrap_mode(false, true, false, false), Bootstrap::Initdb);
        assert_eq!(bootstrap_mode(false, true, true, false), Bootstrap::Clone);
        assert_eq!(bootstrap_mode(false, false, false, false), Bootstrap::Clone);
        assert_eq!(
            bootstrap_mode(true, true, false, false),
            Bootstrap::Existing
        );
        // A recovery replaces initdb only: a bootstrapped cluster's empty instance clones.
        assert_eq!(bootstrap_mode(false, true, false, true), Bootstrap::Recover);
        assert_eq!(bootstrap_mode(false, true, true, true), Bootstrap::Clone);
        assert_eq!(bootstrap_mode(false, false, false, true), Bootstrap::Clone);
    }

    #[test]
    fn bootstrap_sql_creates_roles_and_database() {
        let sql = bootstrap_sql("app", "maps", "pw1", "pw2");
        assert!(sql.starts_with("SET log_statement = 'none';"));
        assert!(sql
            .contains("CREATE ROLE \"streaming_replica\" WITH REPLICATION LOGIN PASSWORD 'pw2';"));
        assert!(sql.contains("CREATE DATABASE \"maps\" OWNER \"app\";"));
    }
}
