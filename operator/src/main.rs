//! The `geodb` binary, one subcommand per duty: `operator` runs the controller,
//! `instance` the agent in a database pod, `crdgen` writes the CRDs.

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
    /// Write one YAML file per CRD into a directory.
    Crdgen {
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Archive one WAL file to S3 (`archive_command = 'geodb wal-push %p'`).
    WalPush { path: PathBuf },
    /// Restore one WAL file from S3 (`restore_command = 'geodb wal-fetch %f %p'`).
    WalFetch { name: String, destination: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crdgen { out_dir } => commands::crdgen(&out_dir),
        Command::Instance => commands::instance(),
        Command::Operator(args) => commands::operator::run(args),
        Command::WalPush { path } => commands::archive::wal_push(&path),
        Command::WalFetch { name, destination } => {
            return commands::archive::wal_fetch(&name, &destination)
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
