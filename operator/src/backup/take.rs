//! Take a base backup: `pg_basebackup` writes a tar to its stdout, which goes through
//! zstd into a multipart upload; WAL is not included (`-X none`), it comes from the
//! archive. The WAL positions come from the tar itself ([`TarScan`]): with `-X none`
//! `pg_basebackup --verbose` does not print them. The manifest is written last, once
//! the backup's last segment is archived too, so a backup that fails anywhere before
//! is never counted.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::archive::checksum::sha256_hex;
use crate::archive::config::ArchiveConfig;
use crate::archive::segment::{object_key, WalFile};
use crate::archive::store::Store;
use crate::postgres::lsn;

use super::error::{BackupError, Result};
use super::manifest::{self, Manifest};
use super::pipe::{self, conninfo_value};
use super::tarscan::{Points, TarScan};
use super::time;

/// How often the archive is checked for the backup's last segment.
const WAL_POLL: Duration = Duration::from_secs(1);

/// The server a backup is taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// A host name, an address, or a socket directory.
    pub host: String,
    pub port: u16,
    pub user: String,
    /// A libpq password file (see [`super::config::Passfile`]).
    pub passfile: PathBuf,
    /// The directory of `pg_basebackup`.
    pub pg_bin: PathBuf,
    /// Shown in `pg_stat_replication` while the backup runs.
    pub application_name: String,
}

pub async fn take(config: &ArchiveConfig, source: &Source, wal_wait: Duration) -> Result<Manifest> {
    let store = Store::new(config)?;
    let started = time::now_secs();
    let id = new_id(
        &store,
        &manifest::backups_prefix(&config.prefix),
        &time::format_id(started),
    )
    .await?;
    let key = manifest::data_key(&config.prefix, &id, config.compression);
    let piped = pipe::command_into_object(
        &store,
        &id,
        &key,
        command(source),
        config.compression,
        TarScan::default(),
    )
    .await?;
    let finished = time::now_secs_ceil();
    let scan = &piped.observer;
    let points = scan.points().ok_or_else(|| {
        BackupError::take(&id)(
            "the tar has no backup_label with a start point or no backup_manifest with WAL \
             ranges"
                .to_owned(),
        )
    })?;
    let Points {
        timeline,
        start_lsn,
        stop_timeline,
        stop_lsn,
    } = points;
    let stop_wal = manifest::stop_segment(stop_timeline, stop_lsn).to_string();
    if let Err(e) = wait_for_wal(&store, config, &id, &stop_wal, wal_wait).await {
        // Never counted without a manifest; removed now rather than by retention.
        let _ = store.delete(&id, &key).await;
        return Err(e);
    }
    let manifest = Manifest {
        id: id.clone(),
        timeline,
        start_lsn: lsn::format(start_lsn),
        stop_lsn: lsn::format(stop_lsn),
        start_wal: manifest::segment_of(timeline, start_lsn).to_string(),
        stop_wal,
        started_at: time::format_rfc3339(started),
        finished_at: time::format_rfc3339(finished),
        size_bytes: piped.produced.input_bytes,
        stored_bytes: piped.produced.stored_bytes,
        sha256: piped.produced.sha256,
        compression: config.compression,
        source: source.host.clone(),
        pg_version: scan.version(),
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| BackupError::take(&id)(format!("manifest: {e}")))?;
    let manifest_key = manifest::manifest_key(&config.prefix, &id);
    store
        .put(&id, &manifest_key, &json, &sha256_hex(&json))
        .await?;
    Ok(manifest)
}

/// The start time as id, with a suffix when one of the same second is under `dir`
/// (`<prefix>/backups/` or `<prefix>/dumps/`).
pub async fn new_id(store: &Store, dir: &str, base: &str) -> Result<String> {
    let listed = store.list(base, &format!("{dir}{base}")).await?;
    let taken: Vec<String> = listed
        .iter()
        .filter_map(|o| Some(o.key.strip_prefix(dir)?.split_once('/')?.0.to_owned()))
        .collect();
    Ok(manifest::free_id(base, &taken))
}

fn command(source: &Source) -> tokio::process::Command {
    let mut cmd = pipe::client_command(source.pg_bin.join("pg_basebackup"));
    let conninfo = format!(
        "passfile={} application_name={}",
        conninfo_value(&source.passfile.to_string_lossy()),
        conninfo_value(&source.application_name)
    );
    // The backup manifest stays: appended to the tar, it holds the end point.
    cmd.args(["--pgdata=-", "--format=tar", "--wal-method=none"])
        .args(["--checkpoint=fast", "--verbose", "--no-password"])
        .arg(format!("--host={}", source.host))
        .arg(format!("--port={}", source.port))
        .arg(format!("--username={}", source.user))
        .arg(format!("--dbname={conninfo}"));
    cmd
}

/// Until `<prefix>/wal/<stop_wal>[.zst]` exists: from a standby, the primary archives
/// it only once it switches segments.
async fn wait_for_wal(
    store: &Store,
    config: &ArchiveConfig,
    id: &str,
    stop_wal: &str,
    wait: Duration,
) -> Result<()> {
    let file = WalFile::parse(stop_wal)
        .ok_or_else(|| BackupError::take(id)(format!("{stop_wal:?} is not a segment")))?;
    let deadline = Instant::now() + wait;
    loop {
        for compression in [config.compression, config.compression.other()] {
            let key = object_key(&config.prefix, &file, compression);
            if store.head(stop_wal, &key).await?.is_some() {
                return Ok(());
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(BackupError::take(id)(format!(
                "WAL segment {stop_wal} did not reach the archive within {}s",
                wait.as_secs()
            )));
        }
        tokio::time::sleep(left.min(WAL_POLL)).await;
    }
}

impl pipe::Observer for TarScan {
    fn observe(&mut self, data: &[u8]) {
        self.feed(data);
    }
}
