//! Errors of the in-pod agent.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("environment variable {0} is not set")]
    MissingEnv(&'static str),
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{command} failed: {detail}")]
    Command { command: String, detail: String },
    #[error("no PostgreSQL server binaries found (looked for pg_ctl on PATH and in /usr/lib/postgresql/*/bin)")]
    NoBinaries,
    #[error("timed out after {0:?} waiting for the primary at {1}")]
    PrimaryUnreachable(Duration, String),
    /// The instance cannot rejoin without a human: it waits, and says why.
    #[error("{0}")]
    Parked(String),
}

impl AgentError {
    /// An I/O error on `path`.
    pub fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
        move |source| AgentError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// A failure of `command` described by `detail`.
    pub fn command(command: &str, detail: impl std::fmt::Display) -> AgentError {
        AgentError::Command {
            command: command.to_owned(),
            detail: detail.to_string(),
        }
    }
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;
