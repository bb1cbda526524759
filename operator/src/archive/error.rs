//! Typed errors of `wal-push` and `wal-fetch`. Each renders as one line for
//! PostgreSQL's log; none carries a credential.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{0} is not set")]
    MissingEnv(&'static str),

    #[error("{var}: {reason}")]
    InvalidEnv { var: &'static str, reason: String },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{0:?} is not a WAL file name")]
    NotWalFile(String),

    #[error("{name}: the archive already holds {key} with other content (sha256 {remote} there, {local} here); refusing to overwrite")]
    Conflict {
        name: String,
        key: String,
        remote: String,
        local: String,
    },

    #[error("{name}: checksum mismatch for {key}: metadata says sha256 {expected}, content has {actual}")]
    ChecksumMismatch {
        name: String,
        key: String,
        expected: String,
        actual: String,
    },

    #[error("{name}: {key} has no sha256 metadata, so it cannot be verified")]
    MissingChecksum { name: String, key: String },

    #[error("{name}: {key} does not decompress: {reason}")]
    Corrupt {
        name: String,
        key: String,
        reason: String,
    },

    #[error("{name}: S3 {operation} of {key} failed: {message}")]
    S3 {
        name: String,
        operation: &'static str,
        key: String,
        message: String,
    },

    /// Not an error for PostgreSQL: the archive has no such file (exit code 1, quietly).
    #[error("{0}: not in the archive")]
    NotFound(String),

    #[error("{0}")]
    Runtime(String),
}

impl ArchiveError {
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
        move |source| ArchiveError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = ArchiveError> = std::result::Result<T, E>;
