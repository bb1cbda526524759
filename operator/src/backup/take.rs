//! Take a base backup: `pg_basebackup` writes a tar to its stdout, which goes through
//! zstd into a multipart upload; WAL is not included (`-X none`), it comes from the
//! archive. The WAL positions come from the tar itself ([`TarScan`]): with `-X none`
//! `pg_basebackup --verbose` does not print them. The manifest is written last, once
//! the backup's last segment is archived too, so a backup that fails anywhere before
//! is never counted.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;

use crate::archive::checksum::sha256_hex;
use crate::archive::config::ArchiveConfig;
use crate::archive::segment::{object_key, Compression, WalFile};
use crate::archive::store::Store;
use crate::postgres::lsn;

use super::error::{BackupError, Result};
use super::manifest::{self, Manifest};
use super::tarscan::{Points, TarScan};
use super::time;
use super::upload::{self, Produced};

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

/// What the stream left behind.
struct Streamed {
    etags: Vec<String>,
    produced: Produced,
    points: Points,
    pg_version: Option<String>,
}

pub async fn take(config: &ArchiveConfig, source: &Source, wal_wait: Duration) -> Result<Manifest> {
    let store = Store::new(config)?;
    let started = time::now_secs();
    let id = new_id(&store, config, &time::format_id(started)).await?;
    let key = manifest::data_key(&config.prefix, &id, config.compression);
    let upload_id = store.create_multipart(&id, &key).await?;
    let streamed = match stream(&store, &id, &key, &upload_id, source, config.compression).await {
        Ok(streamed) => streamed,
        Err(e) => {
            let _ = store.abort_multipart(&id, &key, &upload_id).await;
            return Err(e);
        }
    };
    let finished = time::now_secs_ceil();
    if let Err(e) = store
        .complete_multipart(&id, &key, &upload_id, &streamed.etags)
        .await
    {
        let _ = store.abort_multipart(&id, &key, &upload_id).await;
        return Err(e.into());
    }
    let Points {
        timeline,
        start_lsn,
        stop_timeline,
        stop_lsn,
    } = streamed.points;
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
        size_bytes: streamed.produced.input_bytes,
        stored_bytes: streamed.produced.stored_bytes,
        sha256: streamed.produced.sha256,
        compression: config.compression,
        source: source.host.clone(),
        pg_version: streamed.pg_version,
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| BackupError::take(&id)(format!("manifest: {e}")))?;
    let manifest_key = manifest::manifest_key(&config.prefix, &id);
    store
        .put(&id, &manifest_key, &json, &sha256_hex(&json))
        .await?;
    Ok(manifest)
}

/// The start time as id, with a suffix when a backup of the same second exists.
async fn new_id(store: &Store, config: &ArchiveConfig, base: &str) -> Result<String> {
    let prefix = format!("{}{base}", manifest::backups_prefix(&config.prefix));
    let listed = store.list(base, &prefix).await?;
    let taken: Vec<String> = listed
        .iter()
        .filter_map(|o| {
            let rest = o
                .key
                .strip_prefix(&manifest::backups_prefix(&config.prefix))?;
            Some(rest.split_once('/')?.0.to_owned())
        })
        .collect();
    Ok(manifest::free_id(base, &taken))
}

/// Run `pg_basebackup` into the upload; its ETags, counts and WAL points. On any
/// failure the process group is killed and the caller aborts the upload.
async fn stream(
    store: &Store,
    id: &str,
    key: &str,
    upload_id: &str,
    source: &Source,
    compression: Compression,
) -> Result<Streamed> {
    let failed = BackupError::take(id);
    let mut child = command(source)
        .spawn()
        .map_err(|e| BackupError::take(id)(format!("starting pg_basebackup: {e}")))?;
    let pid = child.id();
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        kill_group(pid);
        return Err(failed("pg_basebackup has no output pipes".to_owned()));
    };
    let stderr_task = tokio::spawn(async move {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text).await;
        String::from_utf8_lossy(&text).into_owned()
    });
    let tar = match stdout.into_owned_fd() {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => {
            kill_group(pid);
            return Err(BackupError::take(id)(format!(
                "pg_basebackup's stdout: {e}"
            )));
        }
    };
    let (tx, rx) = mpsc::channel(1);
    let producer = tokio::task::spawn_blocking(move || {
        let mut scan = TarScan::default();
        upload::produce(tar, compression, tx, &mut |data| scan.feed(data)).map(|p| (p, scan))
    });
    let uploaded = upload::upload(store, id, key, upload_id, rx).await;
    if uploaded.is_err() {
        kill_group(pid);
    }
    let produced = producer
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r);
    if produced.is_err() {
        kill_group(pid);
    }
    let status = child.wait().await;
    let stderr = stderr_task.await.unwrap_or_default();
    let etags = uploaded?;
    let (produced, scan) = produced
        .map_err(|e| BackupError::take(id)(format!("streaming pg_basebackup's output: {e}")))?;
    let status = status.map_err(|e| BackupError::take(id)(format!("pg_basebackup: {e}")))?;
    check_exit(status, &stderr).map_err(BackupError::take(id))?;
    if produced.input_bytes == 0 || etags.is_empty() {
        return Err(failed("pg_basebackup wrote nothing".to_owned()));
    }
    let points = scan.points().ok_or_else(|| {
        BackupError::take(id)(
            "the tar has no backup_label with a start point or no backup_manifest with WAL \
             ranges"
                .to_owned(),
        )
    })?;
    Ok(Streamed {
        etags,
        produced,
        points,
        pg_version: scan.version(),
    })
}

fn command(source: &Source) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(source.pg_bin.join("pg_basebackup"));
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
        .arg(format!("--dbname={conninfo}"))
        // English messages for the errors; no password from elsewhere.
        .env("LC_MESSAGES", "C")
        .env_remove("LC_ALL")
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a failure stops it and anything it started.
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

/// A libpq connection string value, quoted.
pub fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn kill_group(pid: Option<u32>) {
    let Some(pid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions; the child is not reaped yet,
    // so its pid still names its group.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

fn check_exit(status: ExitStatus, stderr: &str) -> std::result::Result<(), String> {
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "pg_basebackup failed ({status}): {}",
            last_line(stderr)
        ))
    }
}

/// The last non-empty line: pg_basebackup's reason for failing.
pub fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("(no output)")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        let failed =
            "pg_basebackup: error: connection to server failed: FATAL:  no pg_hba.conf entry\n\n";
        assert!(last_line(failed).ends_with("no pg_hba.conf entry"));
        assert_eq!(last_line(""), "(no output)");
    }

    #[test]
    fn quotes_conninfo_values() {
        assert_eq!(conninfo_value("/tmp/x y"), "'/tmp/x y'");
        assert_eq!(conninfo_value("a'b\\c"), "'a\\'b\\\\c'");
    }
}
