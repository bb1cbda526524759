//! Base backups in the WAL archive's bucket: `geodb backup` takes one with
//! `pg_basebackup` and applies retention; the agent restores one for a recovery target.
//! Logical dumps (`geodb dump`) go beside them, under `<prefix>/dumps/`.
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
//! | `pipe` | a program's output into one object: compress, hash, upload; abort on failure |
//! | `dump` | logical dumps (`pg_dumpall --globals-only`, `pg_dump -Fc` per database), their keep count, fetching one back |
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
pub mod dump;
pub mod error;
pub mod manifest;
pub mod pipe;
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
pub(crate) async fn wait_for_server(config: &BackupConfig) -> Result<()> {
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

/// `geodb dump`: take a logical dump, then keep the newest `GEODB_DUMP_KEEP` (default
/// 7); one JSON line per step (the manifest, then `{"deletedDumps": [ids]}`).
pub fn dump_command() -> Result<dump::DumpManifest> {
    let archive = ArchiveConfig::from_env()?;
    let config = BackupConfig::from_env()?;
    let keep = dump_keep(std::env::var(crate::pod_contract::env::DUMP_KEEP).ok())?;
    runtime()?.block_on(async {
        let manifest = dump::take(&archive, &config).await?;
        emit(&manifest)?;
        let deleted = dump::apply_keep(&archive, keep).await?;
        emit(&serde_json::json!({ "deletedDumps": deleted }))?;
        Ok(manifest)
    })
}

fn dump_keep(value: Option<String>) -> Result<usize> {
    match value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(7),
        Some(v) => v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
            BackupError::invalid_env(
                crate::pod_contract::env::DUMP_KEEP,
                format!("{v:?} is not 1 or more"),
            )
        }),
    }
}

/// `geodb dump-fetch`: one file of a dump to stdout; its entry of the manifest.
pub fn dump_fetch_command(id: Option<&str>, part: &dump::Part) -> Result<dump::DumpFile> {
    use std::os::fd::AsFd as _;
    let archive = ArchiveConfig::from_env()?;
    let stdout = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| BackupError::Runtime(format!("stdout: {e}")))?;
    runtime()?.block_on(dump::fetch(&archive, id, part, std::fs::File::from(stdout)))
}

/// `geodb dump-list`: the complete dumps, one manifest a line, oldest first.
pub fn dump_list_command() -> Result<()> {
    let archive = ArchiveConfig::from_env()?;
    runtime()?.block_on(async {
        let store = crate::archive::store::Store::new(&archive)?;
        for manifest in dump::list(&store, &archive).await?.0 {
            emit(&manifest)?;
        }
        Ok(())
    })
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
