//! Typed errors of base backups and restores, one line each, never with a credential.

use std::path::Path;

use super::select::SelectError;
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
