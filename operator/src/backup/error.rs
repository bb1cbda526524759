//! Typed errors of base backups and restores, one line each, never with a credential.

use std::path::Path;

use crate::archive::ArchiveError;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The S3 settings, the store, or a WAL name.
    #[error(transparent)]
    Archive(#[from] ArchiveError),

    /// Taking backup `id` failed; nothing was recorded for it.
    #[error("backup {id}: {message}")]
    Take { id: String, message: String },

    /// Restoring backup `id` failed; the target directory is not usable.
    #[error("restore of backup {id}: {message}")]
    Restore { id: String, message: String },

    #[error("{key}: not a backup manifest: {reason}")]
    BadManifest { key: String, reason: String },

    #[error(transparent)]
    Select(#[from] SelectError),

    #[error("{0}")]
    Runtime(String),
}

impl BackupError {
    /// The settings, the store and the files share the archive's errors.
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
        move |source| {
            BackupError::Archive(ArchiveError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    }

    pub fn invalid_env(var: &'static str, reason: String) -> BackupError {
        BackupError::Archive(ArchiveError::InvalidEnv { var, reason })
    }

    pub fn take(id: &str) -> impl FnOnce(String) -> BackupError + '_ {
        move |message| BackupError::Take {
            id: id.to_owned(),
            message,
        }
    }

    pub fn restore(id: &str) -> impl FnOnce(String) -> BackupError + '_ {
        move |message| BackupError::Restore {
            id: id.to_owned(),
            message,
        }
    }
}

pub type Result<T, E = BackupError> = std::result::Result<T, E>;

/// Why no backup can start a recovery at a target (`select`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("the archive holds no complete base backup")]
    NoBackups,

    #[error("recovery target {0:?} is not an RFC 3339 time like 2026-12-01T10:00:00Z")]
    InvalidTime(String),

    #[error("recovery target {0:?} is not an LSN like 0/5000028")]
    InvalidLsn(String),

    #[error("recovery target {target} is before the first recoverable point {first} (the archive covers {start} to {end})")]
    BeforeRange {
        target: String,
        first: String,
        start: String,
        end: String,
    },

    #[error("recovery target {target} is after the last recoverable point {last} (the archive covers {start} to {end})")]
    AfterRange {
        target: String,
        last: String,
        start: String,
        end: String,
    },

    #[error("recovery target LSN {target} is before the end of the first backup, {first} (the archive covers {start} to {end})")]
    LsnBeforeFirst {
        target: String,
        first: String,
        start: String,
        end: String,
    },
}
