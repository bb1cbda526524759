//! `geodb migrate` and `geodb seed`: the one-shot Job commands. Each ends its output
//! with one JSON line on stdout, after every log line, for the operator to read back
//! from the Job's log.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use super::init_tracing;

#[derive(clap::Args)]
pub struct MigrateArgs {
    /// A directory of `V<version>__<description>.sql` files (repeatable).
    #[arg(long = "dir", required = true)]
    pub dirs: Vec<PathBuf>,
    /// The schema of the `geodb_migrations` table.
    #[arg(long, default_value = geodb::jobs::migrate::DEFAULT_SCHEMA)]
    pub schema: String,
}

#[derive(clap::Args)]
pub struct SeedArgs {
    /// How many locations to load.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// Connections loading at once.
    #[arg(long, default_value_t = geodb::jobs::seed::DEFAULT_WORKERS,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=16))]
    pub workers: usize,
    /// Load the same rows every time (ids aside).
    #[arg(long)]
    pub seed: Option<u64>,
}

#[derive(clap::Subcommand)]
pub enum MaintainTask {
    /// VACUUM (ANALYZE) the tables, never queued behind application locks.
    Vacuum(VacuumArgs),
}

#[derive(clap::Args)]
pub struct VacuumArgs {
    /// A table (`name` or `schema.name`) to vacuum (repeatable); every user table when
    /// none is given.
    #[arg(long = "table")]
    pub tables: Vec<String>,
    /// How long a table's VACUUM waits for its lock before the table is skipped.
    #[arg(long, default_value_t = 5000)]
    pub lock_timeout_ms: u64,
    /// A per-table autovacuum setting, `TABLE:KEY=VALUE` (repeatable), set before the
    /// table is vacuumed.
    #[arg(long = "autovacuum")]
    pub autovacuum: Vec<String>,
}

/// Print `line` as the last stdout line.
fn last_line(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// Exit 0 when applied or unchanged, 1 when failed (the error is in the JSON line and
/// the log before it: nothing is printed after the line).
pub fn migrate(args: MigrateArgs) -> ExitCode {
    init_tracing("json");
    let outcome = geodb::jobs::migrate::command(&geodb::jobs::migrate::Args {
        dirs: args.dirs,
        schema: args.schema,
    });
    let line = serde_json::to_string(&outcome).unwrap_or_else(|e| {
        format!(r#"{{"outcome":"failed","version":null,"applied":[],"error":"encoding the outcome: {e}","reason":"runtime"}}"#)
    });
    last_line(&line);
    termination_message(&line);
    if outcome.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

pub fn seed(args: SeedArgs) -> Result<(), String> {
    init_tracing("json");
    let summary = geodb::jobs::seed::command(&geodb::jobs::seed::Args {
        count: args.count,
        workers: args.workers,
        seed: args.seed,
    })
    .map_err(|e| {
        tracing::error!(reason = e.label(), error = %e, "seed failed");
        e.to_string()
    })?;
    tracing::info!(
        locations = summary.locations,
        images = summary.images,
        moderation_logs = summary.moderation_logs,
        seconds = summary.seconds,
        "seeded"
    );
    last_line(&serde_json::to_string(&summary).map_err(|e| e.to_string())?);
    Ok(())
}

/// In a pod the kubelet hands `line` to the operator as the container's termination
/// message (the log is not needed). Only where the kubelet made the file: never created
/// elsewhere.
fn termination_message(line: &str) {
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(geodb::pod_contract::TERMINATION_LOG)
    {
        let _ = file.write_all(line.as_bytes());
    }
}

/// `geodb maintain vacuum`: exit 0 unless the run failed as a whole (a skipped table is
/// reported, not an error).
pub fn maintain(task: MaintainTask) -> ExitCode {
    init_tracing("json");
    let MaintainTask::Vacuum(args) = task;
    let settings = match geodb::jobs::vacuum::parse_settings(&args.autovacuum) {
        Ok(settings) => settings,
        Err(error) => {
            tracing::error!(%error, "bad --autovacuum");
            return ExitCode::FAILURE;
        }
    };
    let report = geodb::jobs::vacuum::command(&geodb::jobs::vacuum::Args {
        tables: args.tables,
        lock_timeout: std::time::Duration::from_millis(args.lock_timeout_ms),
        settings,
    });
    let line = serde_json::to_string(&report).unwrap_or_else(|e| {
        format!(
            r#"{{"outcome":"failed","seconds":0,"tables":[],"error":"encoding the report: {e}"}}"#
        )
    });
    last_line(&line);
    termination_message(&line);
    match report.outcome {
        "failed" => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    }
}
