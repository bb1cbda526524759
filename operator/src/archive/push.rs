//! `geodb wal-push <path>`: archive one WAL file, and with it, in parallel, the others
//! PostgreSQL has marked ready, so that its next calls find them done (pgBackRest's
//! asynchronous archiving, without a daemon). A file is acknowledged only by this
//! call's exit code or, for one pushed ahead, by a spool marker written after its
//! upload succeeded, naming the file as it was read (its [`Stamp`]) and checked against
//! the file as it is when its own call comes: a second read and hash of each segment
//! would cost the serial archiver as much as the upload.

use std::path::{Path, PathBuf};

use futures::stream::{self, StreamExt as _};

use super::checksum::{push_decision, sha256_hex, PushDecision};
use super::compress;
use super::config::ArchiveConfig;
use super::error::{ArchiveError, Result};
use super::segment::{object_key, WalFile};
use super::spool::{marker, marker_vouches, Spool, Stamp};
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
    /// The file as it was read; `None` when it changed meanwhile.
    stamp: Option<Stamp>,
}

pub async fn wal_push(config: &ArchiveConfig, path: &Path) -> Result<()> {
    let spool = Spool::new(&config.spool_dir);
    if pushed_ahead(config, &spool, path) {
        return Ok(());
    }
    let local = load(path.to_path_buf()).await?;
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

/// Whether an earlier call pushed this very file ahead (then its marker goes: it has
/// served its one request).
fn pushed_ahead(config: &ArchiveConfig, spool: &Spool, path: &Path) -> bool {
    let name = file_name(path);
    let (Some(file), Some(stamp)) = (WalFile::parse(&name), Stamp::of(path)) else {
        return false;
    };
    let key = object_key(&config.prefix, &file, config.compression);
    let vouched = spool
        .archived_marker(&name)
        .is_some_and(|m| marker_vouches(&m, &config.origin(), &key, stamp));
    if vouched {
        spool.clear_archived(&name);
    }
    vouched
}

/// Push a file ahead of its request; on success leave the marker its own call will
/// find. Failures stay quiet: that call reports them.
async fn push_ahead(config: &ArchiveConfig, store: &Store, spool: &Spool, path: PathBuf) {
    let Ok(local) = load(path).await else {
        return;
    };
    let (name, sha256, stamp) = (local.name.clone(), local.sha256.clone(), local.stamp);
    let key = object_key(&config.prefix, &local.file, config.compression);
    if push_one(config, store, local).await.is_ok() {
        if let Some(stamp) = stamp {
            let _ = spool.mark_archived(&name, &marker(&sha256, &config.origin(), &key, stamp));
        }
    }
}

/// Upload unless the same content is there already (under either compression); refuse
/// other content under the same name.
async fn push_one(config: &ArchiveConfig, store: &Store, local: Local) -> Result<()> {
    let keys = [config.compression, config.compression.other()]
        .map(|compression| object_key(&config.prefix, &local.file, compression));
    let (first, second) = futures::join!(
        store.head(&local.name, &keys[0]),
        store.head(&local.name, &keys[1])
    );
    for (key, remote) in keys.into_iter().zip([first?, second?]) {
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
        let name = file_name(&path);
        let file = WalFile::parse(&name).ok_or_else(|| ArchiveError::NotWalFile(name.clone()))?;
        let before = Stamp::of(&path);
        let content = std::fs::read(&path).map_err(ArchiveError::io(&path))?;
        let sha256 = sha256_hex(&content);
        let after = Stamp::of(&path);
        Ok(Local {
            name,
            file,
            content,
            sha256,
            stamp: before.filter(|_| before == after),
        })
    })
    .await
    .map_err(|e| ArchiveError::Runtime(e.to_string()))?
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
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
