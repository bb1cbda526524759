//! `geodb migrate`: apply versioned SQL files to one database, each exactly once.
//!
//! # Contract (what the Job sets)
//!
//! | what | how |
//! |---|---|
//! | files | `--dir DIR`, repeatable: each a directory (a mounted ConfigMap) of `V<version>__<description>.sql`; the version is a positive integer or dotted integers (`1`, `1.2`), files run in numeric order; hidden entries (`..data`) and files not ending in `.sql` are skipped |
//! | schema of the history table | `--schema NAME` (default `public`): `NAME.geodb_migrations` (version, description, checksum = sha256 hex of the file's bytes, applied_at, duration_ms) |
//! | server | `PGHOST` (a name, or a socket directory starting with `/`), `PGPORT` (default 5432) |
//! | login | `PGUSER` (default `postgres`), `GEODB_PASSWORD_FILE` (a file holding the password, e.g. `/etc/geodb/secrets/superuser/password`; none when unset) |
//! | database | `GEODB_DATABASE` (required) |
//! | TLS | `PGSSLMODE`: `verify-full` (default over TCP) or `disable`; `PGSSLROOTCERT`: the CA (default `/etc/geodb/secrets/tls/ca.crt`); the name checked is `PGHOST` |
//!
//! A server that does not accept connections yet is retried for two minutes.
//!
//! # What a run does
//!
//! Every file is read and checked first (names, duplicate versions, statements such as
//! `COMMIT` that would end the file's transaction). Then, holding the session advisory
//! lock [`db::LOCK_KEY`] (`pg_advisory_lock(7450483635493103975)`, per database) so two
//! runs never interleave: an applied file whose checksum changed, or a new file older
//! than the highest applied version, stops the run before anything is applied; each
//! pending file then runs with its row in `geodb_migrations` in one transaction, in
//! version order; a failing file is rolled back and the run stops there. Applied
//! versions whose files are gone are logged and otherwise ignored.
//!
//! # Outcome
//!
//! Logs are JSON lines on stdout; the last stdout line is one JSON object
//! ([`Outcome`]): `{"outcome":"applied"|"unchanged"|"failed","version":"<highest
//! applied>"|null,"applied":["<version>",...],"error":"..."|null,"reason":"<label>"|null}`.
//! `applied` lists what this run committed (also on failure); `reason` is the error's
//! stable label ([`MigrateError::label`]). The exit code is 0, or 1 when `failed`.

pub mod db;
pub mod error;
pub mod files;
pub mod name;
pub mod plan;
pub mod sqlscan;

use std::path::PathBuf;

use serde::Serialize;
use tracing::{error, info, warn};

pub use error::{MigrateError, Result};
pub use files::MigrationFile;
pub use name::Version;

use super::connection::{Target, CONNECT_WAIT};

/// `application_name` of the run's connection.
pub const APPLICATION_NAME: &str = "geodb-migrate";
pub const DEFAULT_SCHEMA: &str = "public";

/// The command's arguments.
#[derive(Debug, Clone)]
pub struct Args {
    pub dirs: Vec<PathBuf>,
    pub schema: String,
}

/// The last line of a run's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Outcome {
    /// `applied`, `unchanged` or `failed`.
    pub outcome: String,
    /// The highest version applied in the database, when known.
    pub version: Option<String>,
    /// The versions this run applied, in order.
    pub applied: Vec<String>,
    pub error: Option<String>,
    pub reason: Option<String>,
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        self.outcome != "failed"
    }
}

/// What a run got done, kept as it goes so a failure still reports it.
#[derive(Debug, Default)]
struct Progress {
    highest: Option<Version>,
    applied: Vec<String>,
}

impl Progress {
    fn outcome(self, result: Result<()>) -> Outcome {
        let (outcome, error, reason) = match &result {
            Ok(()) if self.applied.is_empty() => ("unchanged", None, None),
            Ok(()) => ("applied", None, None),
            Err(e) => ("failed", Some(e.to_string()), Some(e.label().to_owned())),
        };
        Outcome {
            outcome: outcome.to_owned(),
            version: self.highest.map(|v| v.to_string()),
            applied: self.applied,
            error,
            reason,
        }
    }
}

/// Run `geodb migrate` with the settings from the environment; never fails itself:
/// a failure is the outcome's.
pub fn command(args: &Args) -> Outcome {
    let mut progress = Progress::default();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| MigrateError::Database {
            what: "starting the runtime",
            message: e.to_string(),
        })
        .and_then(|runtime| runtime.block_on(run(args, &mut progress)));
    if let Err(e) = &result {
        error!(reason = e.label(), error = %e, "migration failed");
    }
    progress.outcome(result)
}

async fn run(args: &Args, progress: &mut Progress) -> Result<()> {
    let files = files::load(&args.dirs)?;
    info!(files = files.len(), dirs = ?args.dirs, "read the migration files");
    let target = Target::from_env()?;
    let mut client = target.connect(APPLICATION_NAME, CONNECT_WAIT).await?;
    info!(server = %target, "connected");
    let waited = db::lock(&client).await?;
    info!(waited, "holding the migration lock");
    db::ensure_table(&client, &args.schema).await?;
    let applied = db::applied(&client, &args.schema).await?;
    progress.highest = applied.iter().map(|a| a.version.clone()).max();
    let plan = plan::plan(&files, &applied)?;
    for gone in &plan.missing {
        warn!(version = %gone.version, description = %gone.description,
            "applied earlier; its file is no longer given (left as it is)");
    }
    info!(
        pending = plan.pending.len(),
        applied = applied.len(),
        "planned"
    );
    for file in &plan.pending {
        info!(file = %file.file, version = %file.version, "applying");
        let duration_ms = db::apply(&mut client, &args.schema, file).await?;
        info!(file = %file.file, version = %file.version, duration_ms, "applied");
        progress.applied.push(file.version.to_string());
        progress.highest = Some(file.version.clone());
    }
    db::unlock(&client).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_lines() {
        let line = |p: Progress, r: Result<()>| serde_json::to_string(&p.outcome(r)).unwrap();
        assert_eq!(
            line(Progress::default(), Ok(())),
            r#"{"outcome":"unchanged","version":null,"applied":[],"error":null,"reason":null}"#
        );
        let progress = Progress {
            highest: Version::parse("5").ok(),
            applied: vec!["4".into(), "5".into()],
        };
        assert_eq!(
            line(progress, Ok(())),
            r#"{"outcome":"applied","version":"5","applied":["4","5"],"error":null,"reason":null}"#
        );
        let progress = Progress {
            highest: Version::parse("4").ok(),
            applied: vec!["4".into()],
        };
        let failed = MigrateError::Apply {
            file: "V5__x.sql".into(),
            message: "ERROR: boom".into(),
        };
        let outcome = progress.outcome(Err(failed));
        assert!(!outcome.succeeded());
        assert_eq!(
            serde_json::to_string(&outcome).unwrap(),
            r#"{"outcome":"failed","version":"4","applied":["4"],"error":"V5__x.sql failed and was rolled back: ERROR: boom","reason":"apply_failed"}"#
        );
    }
}
