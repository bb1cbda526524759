//! `geodb wal-fetch <name> <destination>`: restore one WAL file, verified against its
//! checksum. A segment's request also downloads the next few of its timeline into the
//! spool in parallel, so recovery's next requests are served locally.

use std::path::Path;

use futures::stream::{self, StreamExt as _};

use super::checksum::verify;
use super::compress;
use super::config::ArchiveConfig;
use super::error::{ArchiveError, Result};
use super::segment::{object_key, WalFile, DEFAULT_SEGMENT_SIZE};
use super::spool::Spool;
use super::store::Store;

/// Segments downloaded ahead of recovery.
pub const PREFETCH: usize = 8;
/// Downloads at once, the requested file included.
pub const PARALLEL: usize = 4;

pub async fn wal_fetch(config: &ArchiveConfig, name: &str, destination: &Path) -> Result<()> {
    let file = WalFile::parse(name).ok_or_else(|| ArchiveError::NotWalFile(name.to_owned()))?;
    let spool = Spool::new(&config.spool_dir);
    let window: Vec<String> = file
        .segment()
        .map(|id| id.following(PREFETCH, DEFAULT_SEGMENT_SIZE))
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect();
    if file.segment().is_some() {
        spool.prune_prefetched(|n| n == name || window.iter().any(|w| w == n));
        if let Some(content) = spool.take_prefetched(name, &config.origin()) {
            return write(destination, &content);
        }
    }
    let store = Store::new(config)?;
    let wanted = window.iter().filter(|n| !spool.has_prefetched(n));
    let ahead = stream::iter(wanted)
        .map(|n| prefetch(config, &store, &spool, n))
        .buffer_unordered(PARALLEL - 1)
        .collect::<Vec<()>>();
    let (result, _) = futures::join!(download(config, &store, &file), ahead);
    match result? {
        Some((content, _)) => write(destination, &content),
        None => Err(ArchiveError::NotFound(name.to_owned())),
    }
}

/// Into the spool when found and intact; anything else is left to the file's own
/// request, which reports it.
async fn prefetch(config: &ArchiveConfig, store: &Store, spool: &Spool, name: &str) {
    let Some(file) = WalFile::parse(name) else {
        return;
    };
    if let Ok(Some((content, sha256))) = download(config, store, &file).await {
        let _ = spool.store_prefetched(name, &content, &sha256, &config.origin());
    }
}

/// The verified, uncompressed content and its checksum; `None` when the archive has no
/// such file under either compression.
async fn download(
    config: &ArchiveConfig,
    store: &Store,
    file: &WalFile,
) -> Result<Option<(Vec<u8>, String)>> {
    let name = file.to_string();
    for compression in [config.compression, config.compression.other()] {
        let key = object_key(&config.prefix, file, compression);
        let Some(fetched) = store.get(&name, &key).await? else {
            continue;
        };
        let (task_name, task_key) = (name.clone(), key.clone());
        let checked = tokio::task::spawn_blocking(move || {
            let content = compress::decode(&fetched.body, compression).map_err(|e| {
                ArchiveError::Corrupt {
                    name: task_name.clone(),
                    key: task_key.clone(),
                    reason: e.to_string(),
                }
            })?;
            let sha256 = verify(&task_name, &task_key, fetched.sha256.as_deref(), &content)?;
            Ok((content, sha256))
        });
        return checked
            .await
            .map_err(|e| ArchiveError::Runtime(e.to_string()))?
            .map(Some);
    }
    Ok(None)
}

fn write(destination: &Path, content: &[u8]) -> Result<()> {
    std::fs::write(destination, content).map_err(ArchiveError::io(destination))
}
