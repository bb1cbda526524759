//! `geodb wal-push <path>`: archive one WAL file, and with it, in parallel, the others
//! PostgreSQL has marked ready, so that its next calls find them done (pgBackRest's
//! asynchronous archiving, without a daemon). A file is acknowledged only by this
//! call's exit code or, for one pushed ahead, by a spool marker written after its
//! upload succeeded and checked against the file's content.

use std::path::{Path, PathBuf};

use futures::stream::{self, StreamExt as _};

use super::checksum::{push_decision, sha256_hex, PushDecision};
use super::compress;
use super::config::ArchiveConfig;
use super::error::{ArchiveError, Result};
use super::segment::{object_key, WalFile};
use super::spool::{marker, Spool};
use super::store::Store;

/// Uploads at once: enough to hide the round trips, few enough for 2 cores.
pub const PARALLEL: usize = 4;
/// Other ready files taken along by one call.
pub const AHEAD: usize = 15;
const READY_SUFFIX: &str = ".ready";

/// One file to archive, read and hashed.
struct Local {
    name: String,
    file: WalFile,
    content: Vec<u8>,
    sha256: String,
}

pub async fn wal_push(config: &ArchiveConfig, path: &Path) -> Result<()> {
    let local = load(path.to_path_buf()).await?;
    let spool = Spool::new(&config.spool_dir);
    let key = object_key(&config.prefix, &local.file, config.compression);
    if spool.archived_marker(&local.name) == Some(marker(&local.sha256, &config.origin(), &key)) {
        spool.clear_archived(&local.name);
        return Ok(());
    }
    let store = Store::new(config)?;
    let wal_dir = path.parent().unwrap_or(Path::new("."));
    let ahead = ready_files(wal_dir, &local.name, &spool);
    let name = local.name.clone();
    let own = push_one(config, &store, local);
    let others = stream::iter(ahead)
        .map(|name| push_ahead(config, &store, &spool, wal_dir.join(name)))
        .buffer_unordered(PARALLEL - 1)
        .collect::<Vec<()>>();
    let (result, _) = futures::join!(own, others);
    if result.is_ok() {
        // A marker left from other content under this name is stale now.
        spool.clear_archived(&name);
    }
    result
}

/// Push a file ahead of its request; on success leave the marker its own call will
/// find. Failures stay quiet: that call reports them.
async fn push_ahead(config: &ArchiveConfig, store: &Store, spool: &Spool, path: PathBuf) {
    let Ok(local) = load(path).await else {
        return;
    };
    let (name, sha256) = (local.name.clone(), local.sha256.clone());
    let key = object_key(&config.prefix, &local.file, config.compression);
    if push_one(config, store, local).await.is_ok() {
        let _ = spool.mark_archived(&name, &marker(&sha256, &config.origin(), &key));
    }
}

/// Upload unless the same content is there already (under either compression); refuse
/// other content under the same name.
async fn push_one(config: &ArchiveConfig, store: &Store, local: Local) -> Result<()> {
    for compression in [config.compression, config.compression.other()] {
        let key = object_key(&config.prefix, &local.file, compression);
        let remote = store.head(&local.name, &key).await?;
        match push_decision(remote.as_ref().map(Option::as_deref), &local.sha256) {
            PushDecision::Upload => continue,
            PushDecision::AlreadyArchived => return Ok(()),
            PushDecision::Conflict { remote } => {
                return Err(ArchiveError::Conflict {
                    name: local.name,
                    key,
                    remote,
                    local: local.sha256,
                })
            }
        }
    }
    let key = object_key(&config.prefix, &local.file, config.compression);
    let compression = config.compression;
    let Local {
        name,
        content,
        sha256,
        ..
    } = local;
    let body = tokio::task::spawn_blocking(move || compress::encode(&content, compression))
        .await
        .map_err(|e| ArchiveError::Runtime(e.to_string()))?
        .map_err(|e| ArchiveError::Runtime(format!("{name}: zstd: {e}")))?;
    store.put(&name, &key, &body, &sha256).await
}

/// Read and hash off the async threads (16 MiB of SHA-256 is tens of milliseconds).
async fn load(path: PathBuf) -> Result<Local> {
    tokio::task::spawn_blocking(move || {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file = WalFile::parse(&name).ok_or_else(|| ArchiveError::NotWalFile(name.clone()))?;
        let content = std::fs::read(&path).map_err(ArchiveError::io(&path))?;
        let sha256 = sha256_hex(&content);
        Ok(Local {
            name,
            file,
            content,
            sha256,
        })
    })
    .await
    .map_err(|e| ArchiveError::Runtime(e.to_string()))?
}

/// The files PostgreSQL will ask for next, oldest first, history files before segments
/// (as its archiver orders them), without `current` and those already pushed ahead.
fn ready_files(wal_dir: &Path, current: &str, spool: &Spool) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(wal_dir.join("archive_status")) else {
        return Vec::new();
    };
    let names = entries.flatten().filter_map(|entry| {
        let file = entry.file_name().to_string_lossy().into_owned();
        file.strip_suffix(READY_SUFFIX).map(str::to_owned)
    });
    pick_ahead(names, current, |name| spool.archived_marker(name).is_some())
}

/// Pure part of [`ready_files`].
pub fn pick_ahead(
    names: impl Iterator<Item = String>,
    current: &str,
    already: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut picked: Vec<(bool, String)> = names
        .filter(|name| name != current && !already(name))
        .filter_map(|name| {
            let file = WalFile::parse(&name)?;
            Some((!matches!(file, WalFile::History(_)), name))
        })
        .collect();
    picked.sort();
    picked
        .into_iter()
        .take(AHEAD)
        .map(|(_, name)| name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_ready_files_in_archive_order() {
        let names = [
            "000000010000000000000003",
            "000000010000000000000002",
            "00000002.history",
            "000000010000000000000004",
            "000000010000000000000005",
            "not-wal",
            "000000010000000000000002.00000028.backup",
        ]
        .map(String::from);
        let picked = pick_ahead(names.into_iter(), "000000010000000000000002", |n| {
            n == "000000010000000000000005"
        });
        assert_eq!(
            picked,
            [
                "00000002.history",
                "000000010000000000000002.00000028.backup",
                "000000010000000000000003",
                "000000010000000000000004",
            ]
        );
    }

    #[test]
    fn takes_a_bounded_batch() {
        let names = (0..100).map(|i| format!("0000000100000000{i:08X}"));
        let picked = pick_ahead(names, "", |_| false);
        assert_eq!(picked.len(), AHEAD);
        assert_eq!(picked[0], "000000010000000000000000");
    }
}
