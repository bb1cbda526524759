//! Continuous WAL archiving to an S3-compatible object store: `geodb wal-push %p` as
//! PostgreSQL's `archive_command`, `geodb wal-fetch %f %p` as its `restore_command`.
//!
//! Objects live at `<prefix>/wal/<file name>[.zst]` with the SHA-256 of the uncompressed
//! content in their `sha256` metadata. A push is idempotent (same content: success)
//! and never overwrites other content; a fetch verifies the checksum.
//!
//! | module | what |
//! |---|---|
//! | `config` | the environment variables |
//! | `segment` | WAL file names, the next segments, object keys |
//! | `checksum` | SHA-256, what an existing object means for a push, verification |
//! | `compress` | zstd, bounded on the way back |
//! | `retry` | bounded exponential backoff |
//! | `store` | HEAD/PUT/GET through `aws-sdk-s3` (rustls on ring, optional private CA) |
//! | `spool` | markers of files pushed ahead, prefetched downloads |
//! | `push`, `fetch` | the two commands |
//! | `error` | typed errors, one line each |

pub mod checksum;
pub mod compress;
pub mod config;
pub mod error;
pub mod fetch;
pub mod push;
pub mod retry;
pub mod segment;
pub mod spool;
pub mod store;

use std::path::Path;

pub use config::ArchiveConfig;
pub use error::{ArchiveError, Result};

/// `wal-fetch`'s exit code when the archive has no such file: PostgreSQL asks for files
/// that may not exist (the next timeline's history, the segment after the last).
pub const EXIT_NOT_FOUND: u8 = 1;
/// `wal-fetch`'s exit code for every other failure (an unreachable store, a checksum
/// mismatch): above 125, which PostgreSQL takes as fatal, so a recovery stops rather
/// than ending early at the last file it could read and promoting there.
pub const EXIT_FAILED: u8 = 126;

/// Which archive a command reads: the cluster's own, or the source of a recovery
/// (the same variables under `GEODB_RECOVERY_`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Own,
    Recovery,
}

impl Source {
    pub fn config(self) -> Result<ArchiveConfig> {
        match self {
            Self::Own => ArchiveConfig::from_env(),
            Self::Recovery => {
                let cwd = std::env::current_dir().map_err(ArchiveError::io(Path::new(".")))?;
                ArchiveConfig::from_lookup(
                    |name| std::env::var(crate::pod_contract::env::recovery(name)).ok(),
                    &cwd,
                )
            }
        }
    }
}

/// `geodb wal-push <path>`.
pub fn push_command(path: &Path) -> Result<()> {
    let config = ArchiveConfig::from_env()?;
    runtime()?.block_on(push::wal_push(&config, path))
}

/// `geodb wal-fetch <name> <destination>`.
pub fn fetch_command(source: Source, name: &str, destination: &Path) -> Result<()> {
    let config = source.config()?;
    runtime()?.block_on(fetch::wal_fetch(&config, name, destination))
}

/// The exit code of a `wal-fetch` result.
pub fn fetch_exit_code(result: &Result<()>) -> u8 {
    match result {
        Ok(()) => 0,
        Err(ArchiveError::NotFound(_)) => EXIT_NOT_FOUND,
        Err(_) => EXIT_FAILED,
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| ArchiveError::Runtime(format!("tokio runtime: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(fetch_exit_code(&Ok(())), 0);
        assert_eq!(fetch_exit_code(&Err(ArchiveError::NotFound("x".into()))), 1);
        assert_eq!(
            fetch_exit_code(&Err(ArchiveError::Runtime("x".into()))),
            126
        );
    }
}
