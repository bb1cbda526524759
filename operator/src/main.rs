//! The `geodb` binary, one subcommand per duty: `operator` runs the controller,
//! `instance` the agent in a database pod,
//! `pooler` PgBouncer's supervisor, `crdgen` writes the CRDs; `migrate`, `seed`,
//! `maintain` and `bench` are one-shot Jobs.

// A function longer than a screen (clippy.toml: 80 lines) is split by what it does.
#![deny(clippy::too_many_lines)]

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "geodb",
    version,
    about = "Kubernetes operator for PostGIS clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the GeoDatabase controller.
    Operator(commands::operator::OperatorArgs),
    /// Run inside a database pod: prepare the data directory, then run PostgreSQL.
    Instance,
    /// Run inside a pooler pod: run PgBouncer, reload it when a watched file changes.
    Pooler {
        /// PgBouncer's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// A directory whose files PgBouncer reads on reload (its certificate).
        #[arg(long)]
        watch: Vec<PathBuf>,
    },
    /// The container's health (the image's HEALTHCHECK): a pooler pod's readiness
    /// through PgBouncer's console, else PostgreSQL answering on its socket.
    Healthcheck,
    /// Write one YAML file per CRD into a directory.
    Crdgen {
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Archive one WAL file to S3 (`archive_command = 'geodb wal-push %p'`).
    WalPush { path: PathBuf },
    /// Restore one WAL file from S3 (`restore_command = 'geodb wal-fetch %f %p'`).
    WalFetch {
        name: String,
        destination: PathBuf,
        /// `recovery`: the archive a recovery restores from (`GEODB_RECOVERY_S3_*`).
        #[arg(long, value_enum, default_value_t = FetchSource::Own)]
        source: FetchSource,
    },
    /// Take a base backup to S3, then apply the retention policy (`GEODB_BACKUP_*`).
    Backup,
    /// Take a logical dump of every database and the roles to S3, then keep the newest
    /// `GEODB_DUMP_KEEP` (`GEODB_BACKUP_*` say where to connect).
    Dump,
    /// Write one file of a logical dump to stdout, decompressed and verified: a
    /// database's custom-format archive (for `pg_restore`) or, with `--globals`, the
    /// roles as SQL.
    DumpFetch {
        /// The dump's id; the newest complete one when unset.
        #[arg(long)]
        id: Option<String>,
        /// The database whose archive to write.
        #[arg(long, conflicts_with = "globals", required_unless_present = "globals")]
        database: Option<String>,
        /// The roles and tablespaces (`pg_dumpall --globals-only`) instead.
        #[arg(long)]
        globals: bool,
    },
    /// List the complete logical dumps, one JSON manifest a line, oldest first.
    DumpList,
    /// Apply the pending versioned SQL files, each once, in its own transaction; the
    /// last stdout line is the outcome as JSON (`PGHOST`, `GEODB_DATABASE`, ...).
    Migrate(commands::jobs::MigrateArgs),
    /// Load random locations in Ho Chi Minh City and Hanoi, with images and
    /// moderation logs, into the sample schema (after `geodb migrate`).
    Seed(commands::jobs::SeedArgs),
    /// Wait until the server of the Job variables (`PGHOST`, ...) accepts a login, as the
    /// other Job commands do before their work (a migration image's init container).
    WaitReady,
    /// Maintenance of the application database (the maintenance CronJob's command).
    Maintain {
        #[command(subcommand)]
        task: commands::jobs::MaintainTask,
    },
    /// Benchmarks against the application database.
    Bench {
        #[command(subcommand)]
        task: commands::jobs::BenchTask,
    },
    /// Unpack the base backup a recovery target starts from into an empty directory.
    Restore {
        /// `latest`, `time:<RFC 3339>`, `lsn:<X/Y>` or `name:<restore point>`.
        #[arg(long, default_value = "latest")]
        target: String,
        #[arg(long)]
        pgdata: PathBuf,
        /// `recovery`: the archive named by `GEODB_RECOVERY_S3_*`.
        #[arg(long, value_enum, default_value_t = FetchSource::Own)]
        source: FetchSource,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FetchSource {
    Own,
    Recovery,
}

impl From<FetchSource> for geodb::archive::Source {
    fn from(source: FetchSource) -> Self {
        match source {
            FetchSource::Own => Self::Own,
            FetchSource::Recovery => Self::Recovery,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crdgen { out_dir } => commands::crdgen(&out_dir),
        Command::Instance => commands::instance(),
        Command::Pooler { config, watch } => commands::pooler(&config, &watch),
        Command::Healthcheck => commands::healthcheck(),
        Command::Operator(args) => commands::operator::run(args),
        Command::WalPush { path } => commands::archive::wal_push(&path),
        Command::Backup => commands::backup::backup(),
        Command::Dump => commands::backup::dump(),
        Command::DumpFetch {
            id,
            database,
            globals: _,
        } => commands::backup::dump_fetch(id.as_deref(), database),
        Command::DumpList => commands::backup::dump_list(),
        Command::Migrate(args) => return commands::jobs::migrate(args),
        Command::Seed(args) => commands::jobs::seed(args),
        Command::WaitReady => commands::jobs::wait_ready(),
        Command::Maintain { task } => return commands::jobs::maintain(task),
        Command::Bench { task } => commands::jobs::bench(task),
        Command::Restore {
            target,
            pgdata,
            source,
        } => commands::backup::restore(source.into(), &target, &pgdata),
        Command::WalFetch {
            name,
            destination,
            source,
        } => {
            return commands::archive::wal_fetch(source.into(), &name, &destination);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("geodb: {message}");
            ExitCode::FAILURE
        }
    }
}
