//! What stops `geodb migrate`, one line each, each with a stable label (the outcome
//! line's `reason`).

use std::path::PathBuf;

use crate::jobs::connection::ConnectionError;

/// An applied migration whose file now holds something else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub file: String,
    pub version: String,
    pub applied: String,
    pub found: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (version {}) changed after it was applied: sha256 {} was applied, the file has {}",
            self.file, self.version, self.applied, self.found
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{file}: {reason}")]
    InvalidFile { file: String, reason: String },

    #[error("{first} and {second} have the same version {version}")]
    DuplicateVersion {
        first: PathBuf,
        second: PathBuf,
        version: String,
    },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error(transparent)]
    Connection(#[from] ConnectionError),

    #[error("{what}: {message}")]
    Database { what: &'static str, message: String },

    #[error("{}; nothing was applied", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    ChecksumMismatch(Vec<Mismatch>),

    #[error("{file} (version {version}) is older than the applied version {highest}; nothing was applied (give it a version above {highest})")]
    OutOfOrder {
        file: String,
        version: String,
        highest: String,
    },

    #[error("{file} failed and was rolled back: {message}")]
    Apply { file: String, message: String },

    #[error("geodb_migrations records version {0:?}, which is not a version")]
    BadRecord(String),
}

impl MigrateError {
    /// A stable label for logs, the outcome line and the operator's condition.
    pub fn label(&self) -> &'static str {
        match self {
            MigrateError::InvalidFile { .. } => "invalid_file",
            MigrateError::DuplicateVersion { .. } => "duplicate_version",
            MigrateError::Io { .. } => "io",
            MigrateError::Connection(e) => e.label(),
            MigrateError::Database { .. } => "database",
            MigrateError::ChecksumMismatch(_) => "checksum_mismatch",
            MigrateError::OutOfOrder { .. } => "out_of_order",
            MigrateError::Apply { .. } => "apply_failed",
            MigrateError::BadRecord(_) => "bad_record",
        }
    }

    pub fn database(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |error| MigrateError::Database {
            what,
            message: crate::jobs::connection::describe(&error),
        }
    }
}

pub type Result<T, E = MigrateError> = std::result::Result<T, E>;
