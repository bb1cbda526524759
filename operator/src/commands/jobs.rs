//! `geodb migrate`, `geodb seed`, `geodb maintain` and `geodb bench`: the one-shot Job
//! commands. Each ends its output
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
    /// Keep the indexes and foreign keys in place even when the tables are empty (by
    /// default, empty tables the role owns are loaded in one transaction and their
    /// indexes and foreign keys built after the rows).
    #[arg(long)]
    pub no_bulk: bool,
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

#[derive(clap::Subcommand)]
pub enum BenchTask {
    /// The latencies of the sample schema's spatial and full-text searches (after
    /// `geodb seed`), each query's plan checked for its index first.
    Spatial(BenchSpatialArgs),
}

#[derive(clap::Args)]
pub struct BenchSpatialArgs {
    /// Another server to measure, `NAME=HOST:PORT[:SERVERNAME]` (repeatable), with the
    /// environment's user, password, database and TLS; SERVERNAME is the name
    /// verify-full checks while dialling HOST. The environment's server, as `direct`,
    /// when none is given.
    #[arg(long = "target")]
    pub targets: Vec<String>,
    /// Timed runs of each query on each target.
    #[arg(long, default_value_t = geodb::jobs::bench_spatial::DEFAULT_ITERATIONS,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub iterations: usize,
    /// Untimed runs of each query first.
    #[arg(long, default_value_t = geodb::jobs::bench_spatial::DEFAULT_WARMUP)]
    pub warmup: usize,
    /// Also time the radius search with index scans off in its session.
    #[arg(long)]
    pub compare_no_index: bool,
    /// Timed runs of the radius search without index scans.
    #[arg(long, default_value_t = geodb::jobs::bench_spatial::DEFAULT_NO_INDEX_ITERATIONS,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub no_index_iterations: usize,
    /// Write the JSON object (the last stdout line) to this file too.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Draw the same parameters every time.
    #[arg(long)]
    pub seed: Option<u64>,
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

/// The summary on success; `{"error": ...}` on failure (also the termination message, for
/// the operator's seed Job).
pub fn seed(args: SeedArgs) -> Result<(), String> {
    init_tracing("json");
    let summary = geodb::jobs::seed::command(&geodb::jobs::seed::Args {
        count: args.count,
        workers: args.workers,
        seed: args.seed,
        bulk: !args.no_bulk,
    })
    .map_err(|e| {
        tracing::error!(reason = e.label(), error = %e, "seed failed");
        termination_message(&serde_json::json!({"error": e.to_string()}).to_string());
        e.to_string()
    })?;
    tracing::info!(
        locations = summary.locations,
        images = summary.images,
        moderation_logs = summary.moderation_logs,
        seconds = summary.seconds,
        "seeded"
    );
    let line = serde_json::to_string(&summary).map_err(|e| e.to_string())?;
    last_line(&line);
    termination_message(&line);
    Ok(())
}

/// `geodb wait-ready`: a login through the Job's variables succeeds within
/// `CONNECT_WAIT`. A Service whose endpoints are not in place yet refuses connections for
/// a moment after its primary is confirmed; tools that do not retry (Alembic) run after
/// this.
pub fn wait_ready() -> Result<(), String> {
    init_tracing("json");
    let target = geodb::jobs::connection::Target::from_env().map_err(|e| e.to_string())?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?
        .block_on(async {
            target
                .connect("geodb-wait-ready", geodb::jobs::connection::CONNECT_WAIT)
                .await
                .map(|_| tracing::info!(server = %target, "the server accepts logins"))
                .map_err(|e| e.to_string())
        })
}

/// `geodb bench spatial`: the table, then the JSON object as the last stdout line; a
/// plan without its index fails the run, printing the plan.
pub fn bench(task: BenchTask) -> Result<(), String> {
    init_tracing("text");
    let BenchTask::Spatial(args) = task;
    let report = geodb::jobs::bench_spatial::command(&geodb::jobs::bench_spatial::Args {
        targets: args.targets,
        iterations: args.iterations,
        warmup: args.warmup,
        no_index_iterations: args.compare_no_index.then_some(args.no_index_iterations),
        json_out: args.json_out,
        seed: args.seed,
    })
    .map_err(|e| {
        tracing::error!(reason = e.label(), "bench failed");
        e.to_string()
    })?;
    print!("{}", report.table());
    last_line(&report.json().to_string());
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
