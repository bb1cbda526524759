//! Phase 3, RPO: a primary archiving with `geodb wal-push` and `archive_timeout = 60`
//! (the operator's default), a writer committing one row every ~50 ms with an increasing
//! id; after ~90 s the primary is killed with SIGKILL and its volume (data directory and
//! spool) thrown away; the base backup is restored and recovered from the archive alone
//! (`geodb wal-fetch`), and the newest restored row compared with the last acknowledged.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::base::{self, GeodbBackup};
use super::pg::{query_i64, Pg};
use super::report::{Report, Target};
use super::{progress, restore, Bench};

const PREFIX: &str = "rpo";
const WRITE_EVERY: Duration = Duration::from_millis(50);
const ARCHIVE_TIMEOUT_S: u64 = 60;

fn write_for() -> Duration {
    let secs = std::env::var("BENCH_RPO_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(90);
    Duration::from_secs(secs)
}

/// Acknowledged commits: id and when the client got the answer.
type Acks = Arc<Mutex<Vec<(i64, Instant)>>>;

pub async fn measure(bench: &Bench, geodb: GeodbBackup, report: &mut Report) -> anyhow::Result<()> {
    let use_geodb_base = geodb.backup && geodb.restore;
    let method = if use_geodb_base {
        "geodb backup + geodb restore"
    } else {
        "pg_basebackup -X none (geodb backup/restore not available)"
    };
    progress(format!(
        "phase 3: RPO after losing the primary (base: {method})"
    ));
    report.context("rpo_base_backup", method);
    report.context("rpo_archive_timeout_s", ARCHIVE_TIMEOUT_S);
    let volume = bench.subdir("rpo/volume")?;
    let data = volume.join("data");
    Pg::initdb(bench, &data).await?;
    let spool = volume.join("geodb-wal-spool");
    let mut vars = bench.geodb_vars(PREFIX, &spool, "zstd")?;
    vars.remove(geodb::archive::config::WAL_SPOOL);
    vars.insert("PGDATA".into(), data.display().to_string());
    let settings = [
        "archive_mode=on".to_owned(),
        format!("archive_command={} wal-push %p", bench.geodb.display()),
        format!("archive_timeout={ARCHIVE_TIMEOUT_S}"),
    ];
    let mut pg = Pg::start(bench, &data, &settings, &vars)?;
    let client = pg.connect().await?;
    client
        .batch_execute(
            "CREATE TABLE rpo (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
             ALTER ROLE postgres PASSWORD 'bench-backup-password';",
        )
        .await?;
    let base = bench.dir.path().join("rpo").join("base");
    if use_geodb_base {
        let backup_spool = bench.subdir("rpo/backup-spool")?;
        let backup_vars = super::pg::backup_vars(bench, &pg, PREFIX, &backup_spool)?;
        base::geodb_backup(bench, &backup_vars, PREFIX).await?;
    } else {
        pg_basebackup(bench, &pg, &base).await?;
    }
    let acks = write_then_kill(&mut pg, client).await?;
    // The volume is gone: data directory, spool, everything beside them.
    std::fs::remove_dir_all(&volume)?;
    recover(bench, use_geodb_base, &base, &acks, report).await
}

async fn pg_basebackup(bench: &Bench, pg: &Pg, base: &Path) -> anyhow::Result<()> {
    let (socket, port) = (pg.socket_dir.display().to_string(), pg.port.to_string());
    let target = base.display().to_string();
    bench
        .pg_tool(
            "pg_basebackup",
            &[
                "-h",
                &socket,
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &target,
                "--wal-method=none",
                "--checkpoint=fast",
                "--no-sync",
            ],
        )
        .await?;
    Ok(())
}

/// The writer for the set time, then SIGKILL to the primary; the acknowledged commits.
async fn write_then_kill(
    pg: &mut Pg,
    client: tokio_postgres::Client,
) -> anyhow::Result<Vec<(i64, Instant)>> {
    let acks: Acks = Arc::default();
    let writer = tokio::spawn(write_rows(client, acks.clone()));
    let duration = write_for();
    let started = Instant::now();
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(15).min(duration.saturating_sub(started.elapsed())))
            .await;
        let count = acks.lock().map(|a| a.len()).unwrap_or_default();
        progress(format!(
            "  {count} rows committed, {:.0} s",
            started.elapsed().as_secs_f64()
        ));
    }
    pg.kill9();
    let killed_at = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(30), writer).await;
    let acks = acks.lock().map(|a| a.clone()).unwrap_or_default();
    let last = acks
        .last()
        .map(|(id, at)| (*id, killed_at.saturating_duration_since(*at)));
    progress(format!(
        "  primary killed; last acknowledged (id, before the kill): {last:?}"
    ));
    if acks.is_empty() {
        bail!("the writer committed nothing");
    }
    Ok(acks)
}

/// One row every [`WRITE_EVERY`] until a commit fails (the server is gone).
async fn write_rows(client: tokio_postgres::Client, acks: Acks) {
    let mut tick = tokio::time::interval(WRITE_EVERY);
    let Ok(insert) = client.prepare("INSERT INTO rpo (id) VALUES ($1)").await else {
        return;
    };
    for id in 1i64.. {
        tick.tick().await;
        if client.execute(&insert, &[&id]).await.is_err() {
            return;
        }
        if let Ok(mut a) = acks.lock() {
            a.push((id, Instant::now()));
        }
    }
}

/// Restore the base backup, recover to the end of the archive, compare.
async fn recover(
    bench: &Bench,
    use_geodb_base: bool,
    base: &Path,
    acks: &[(i64, Instant)],
    report: &mut Report,
) -> anyhow::Result<()> {
    let data = bench.dir.path().join("rpo").join("restored");
    let spool = bench.subdir("rpo/restore-spool")?;
    let vars = bench.geodb_vars(PREFIX, &spool, "zstd")?;
    let started = Instant::now();
    if use_geodb_base {
        restore::restore_latest(bench, &vars, &data).await?;
    } else {
        copy_dir(base, &data)?;
    }
    let command = format!("{} wal-fetch %f %p", bench.geodb.display());
    let (_pg, client, _) = base::recover(bench, &data, &command, &vars).await?;
    let rto = started.elapsed();
    let restored = query_i64(&client, "SELECT coalesce(max(id), 0) FROM rpo").await?;
    let times: HashMap<i64, Instant> = acks.iter().copied().collect();
    let (last_id, last_at) = *acks.last().context("no commits")?;
    let lost = (last_id - restored).max(0);
    let rpo = match times.get(&restored) {
        _ if restored >= last_id => 0.0,
        Some(at) => last_at.saturating_duration_since(*at).as_secs_f64(),
        // Nothing of the writer's restored: everything since its first commit is lost.
        None => last_at.saturating_duration_since(acks[0].1).as_secs_f64(),
    };
    progress(format!(
        "  restored up to id {restored} of {last_id} acknowledged: {lost} rows, {rpo:.1} s lost ({:.1} s to restore and recover)",
        rto.as_secs_f64()
    ));
    report.figure_with("rpo_s", rpo, Target::Max(60.0));
    report.figure("rpo_lost_rows_count", lost as f64);
    report.context("rpo_acknowledged_rows", last_id);
    report.context("rpo_restore_and_recover_s", rto.as_secs_f64());
    Ok(())
}

/// `cp -a` in Rust: directories, files, symlinks, permissions.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    std::fs::set_permissions(to, std::fs::metadata(from)?.permissions())?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&src, &dst)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}
