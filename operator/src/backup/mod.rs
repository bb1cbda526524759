//! Base backups in the WAL archive's bucket: `geodb backup` takes one with
//! `pg_basebackup` and applies retention; the agent restores one for a recovery target.
//!
//! Layout: `<prefix>/backups/<id>/base.tar[.zst]`, then `<prefix>/backups/<id>/backup.json`
//! (the manifest), written last: a backup stopped midway is never counted. `<id>` is
//! the UTC start time, `YYYYMMDDTHHMMSSZ`. WAL is not in the backup; restores get it
//! from `<prefix>/wal/` through `wal-fetch`.
//!
//! | module | what |
//! |---|---|
//! | `config` | the command's environment variables, its private passfile |
//! | `manifest` | the manifest, keys and ids, the segment holding an LSN |
//! | `take` | `pg_basebackup` into a multipart upload, the wait for its last segment |
//! | `tarscan` | the WAL positions and version in the tar stream |
//! | `upload` | compress, hash and cut a stream into parts; upload them two at a time |
//! | `catalog` | what the bucket holds: backups, incomplete ones, WAL |
//! | `select` | the backup a recovery target starts from |
//! | `retention` | what to delete (pure), and deleting it |
//! | `restore` | stream a backup into `tar`, verified |
//! | `time` | RFC 3339 and id timestamps |
//! | `error` | typed errors, one line each |

pub mod catalog;
pub mod config;
pub mod error;
pub mod manifest;
pub mod restore;
pub mod retention;
pub mod select;
pub mod take;
pub mod tarscan;
pub mod time;
pub mod upload;

use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;

pub use catalog::Catalog;
pub use config::BackupConfig;
pub use error::{BackupError, Result};
pub use manifest::Manifest;
pub use retention::{Plan, Retention};
pub use select::Target;
pub use take::Source;

use crate::archive::ArchiveConfig;

/// `application_name` of the backup's connection.
pub const APPLICATION_NAME: &str = "geodb-backup";

/// `geodb backup`: take a backup, then apply retention when set; one JSON line on
/// stdout per step (the manifest, then `{"retention": <plan applied>}`).
pub fn backup_command() -> Result<Manifest> {
    let archive = ArchiveConfig::from_env()?;
    let config = BackupConfig::from_env()?;
    runtime()?.block_on(async {
        let manifest = backup(&archive, &config).await?;
        emit(&manifest)?;
        if config.retention.is_set() {
            let plan = apply_retention(&archive, &config.retention).await?;
            emit(&serde_json::json!({ "retention": plan }))?;
        }
        Ok(manifest)
    })
}

/// How long a backup waits for its server to accept connections (a Job may start while
/// the Service has no ready endpoint yet, e.g. right after a failover).
const SERVER_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Wait until `pg_isready` says the server accepts connections.
async fn wait_for_server(config: &BackupConfig) -> Result<()> {
    let started = std::time::Instant::now();
    loop {
        let ready = tokio::process::Command::new(config.pg_bin.join("pg_isready"))
            .args([
                "-q",
                "-h",
                &config.host,
                "-p",
                &config.port.to_string(),
                "-t",
                "3",
            ])
            .status()
            .await
            .map(|s| s.success())
            .unwrap_or(false);
        if ready {
            return Ok(());
        }
        if started.elapsed() > SERVER_WAIT {
            return Err(BackupError::Runtime(format!(
                "{}:{} did not accept connections within {SERVER_WAIT:?}",
                config.host, config.port
            )));
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Take one backup with the settings of `config`.
pub async fn backup(archive: &ArchiveConfig, config: &BackupConfig) -> Result<Manifest> {
    wait_for_server(config).await?;
    let passfile = config::Passfile::write(&config.password_file)?;
    let source = Source {
        host: config.host.clone(),
        port: config.port,
        user: config.user.clone(),
        passfile: passfile.path().to_path_buf(),
        pg_bin: config.pg_bin.clone(),
        application_name: APPLICATION_NAME.to_owned(),
    };
    let manifest = take::take(archive, &source, config.wal_wait).await;
    drop(passfile);
    manifest
}

/// Read the catalog, plan against `retention` now, apply; the plan.
pub async fn apply_retention(archive: &ArchiveConfig, retention: &Retention) -> Result<Plan> {
    let catalog = catalog::read(archive).await?;
    let plan = retention::plan(&catalog, retention, SystemTime::now());
    retention::apply(archive, &plan).await?;
    Ok(plan)
}

/// Restore the backup `target` starts from into `pgdata`; its manifest. Recovery
/// settings (restore_command, the target itself) are the caller's.
pub async fn restore_for(
    archive: &ArchiveConfig,
    target: &Target,
    pgdata: &Path,
) -> Result<Manifest> {
    let catalog = catalog::read(archive).await?;
    let manifest = select::select(&catalog, target)?.clone();
    restore::restore(archive, &manifest, pgdata).await?;
    Ok(manifest)
}

fn emit(value: &impl Serialize) -> Result<()> {
    let line = serde_json::to_string(value)
        .map_err(|e| BackupError::Runtime(format!("JSON output: {e}")))?;
    println!("{line}");
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| BackupError::Runtime(format!("tokio runtime: {e}")))
}
