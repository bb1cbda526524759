//! Phase 2, base backup and restore of a database of about 1 GiB (`pgbench -i -s 70`):
//! `geodb backup` against `pgbackrest backup --type=full`, then each tool's restore, and
//! the time from the start of geodb's restore until the restored server accepts queries
//! out of recovery (restore, start, replay of the archived WAL).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::pg::{backup_vars, query_i64, Pg, PASSWORD};
use super::pgbackrest::PgBackRest;
use super::report::{Report, Target};
use super::{list_sizes, mib, mib_per_s, progress, restore, tree_bytes, Bench};

/// `pgbench -i -s` of the database: 70 makes about 1 GiB (`BENCH_SCALE` for another).
fn scale() -> i64 {
    std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(70)
}
const STANZA: &str = "backup";
pub const PREFIX: &str = "base";

/// What `geodb` offers today: `backup` (a subcommand) and the library restore.
#[derive(Debug, Clone, Copy)]
pub struct GeodbBackup {
    pub backup: bool,
    pub restore: bool,
}

impl GeodbBackup {
    pub async fn probe(bench: &Bench) -> Self {
        let mut cmd = bench.command(&bench.geodb, Path::new("/"), &HashMap::new());
        cmd.args(["backup", "--help"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let backup = cmd.status().await.is_ok_and(|s| s.success());
        Self {
            backup,
            restore: backup && restore::AVAILABLE,
        }
    }
}

/// Run `geodb backup`; the id of the backup it wrote (from `backups/<id>/backup.json`).
pub async fn geodb_backup(
    bench: &Bench,
    vars: &HashMap<String, String>,
    prefix: &str,
) -> anyhow::Result<String> {
    let mut cmd = bench.command(&bench.geodb, Path::new("/"), vars);
    cmd.arg("backup");
    bench.run(cmd, "geodb backup").await?;
    let manifests: Vec<String> = list_sizes(&bench.s3, &format!("{prefix}/backups/"))
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.ends_with("/backup.json"))
        .collect();
    let newest = manifests
        .iter()
        .max()
        .context("geodb backup wrote no backup.json")?;
    let id = newest
        .trim_end_matches("/backup.json")
        .rsplit('/')
        .next()
        .unwrap_or_default();
    Ok(id.to_owned())
}

/// A cluster loaded with `pgbench -i -s 70`, running, archiving to nothing yet.
async fn load(bench: &Bench) -> anyhow::Result<(Pg, u64)> {
    let data = bench.dir.path().join("db").join("data");
    Pg::initdb(bench, &data).await?;
    let settings = ["archive_mode=on".to_owned()];
    let mut pg = Pg::start(bench, &data, &settings, &HashMap::new())?;
    let client = pg.connect().await?;
    client
        .batch_execute("ALTER SYSTEM SET archive_command = '/bin/true'")
        .await?;
    client.batch_execute("SELECT pg_reload_conf()").await?;
    client
        .batch_execute(&format!("ALTER ROLE postgres PASSWORD '{PASSWORD}'"))
        .await?;
    let started = Instant::now();
    let (socket, port) = (pg.socket_dir.display().to_string(), pg.port.to_string());
    let scale_arg = scale().to_string();
    bench
        .pg_tool(
            "pgbench",
            &[
                "-i", "-q", "-s", &scale_arg, "-h", &socket, "-p", &port, "-U", "postgres",
                "postgres",
            ],
        )
        .await?;
    client.batch_execute("CHECKPOINT").await?;
    let db_bytes = query_i64(&client, "SELECT pg_database_size('postgres')").await?;
    progress(format!(
        "  pgbench -i -s {}: {:.0} MiB in {:.0} s",
        scale(),
        mib(u64::try_from(db_bytes).unwrap_or_default()),
        started.elapsed().as_secs_f64()
    ));
    Ok((pg, u64::try_from(db_bytes).unwrap_or_default()))
}

/// Archive to both tools from now on (each backup needs its WAL in its own archive).
async fn archive_to_both(bench: &Bench, pgbr: &PgBackRest, pg: &mut Pg) -> anyhow::Result<()> {
    let command = format!(
        "{} wal-push %p && {}",
        bench.geodb.display(),
        pgbr.archive_command(bench, STANZA)
    );
    let client = pg.connect().await?;
    client
        .batch_execute(&format!(
            "ALTER SYSTEM SET archive_command = '{}'",
            command.replace('\'', "''")
        ))
        .await?;
    client.batch_execute("SELECT pg_reload_conf()").await?;
    Ok(())
}

pub async fn measure(
    bench: &Bench,
    pgbr: &mut PgBackRest,
    report: &mut Report,
) -> anyhow::Result<()> {
    let geodb = GeodbBackup::probe(bench).await;
    progress(format!(
        "phase 2: base backup and restore of a ~1 GiB database ({geodb:?})"
    ));
    let (mut pg, db_bytes) = load_with_archive_env(bench).await?;
    let pgdata_bytes = tree_bytes(&pg.data, Some("pg_wal"))?;
    report.context("database_mib", mib(db_bytes));
    report.context("pgdata_mib_without_wal", mib(pgdata_bytes));
    pgbr.stanza_create(bench, STANZA, &pg, false).await?;
    archive_to_both(bench, pgbr, &mut pg).await?;

    progress("  pgbackrest backup --type=full");
    let started = Instant::now();
    pgbr.run(bench, STANZA, &["backup", "--type=full"]).await?;
    let pgbr_backup = started.elapsed();
    report.figure(
        "base_backup_pgbackrest_mib_per_s",
        mib_per_s(pgdata_bytes, pgbr_backup),
    );

    let mut geodb_id = None;
    if geodb.backup {
        progress("  geodb backup");
        let spool = bench.subdir("db/backup-spool")?;
        let vars = backup_vars(bench, &pg, PREFIX, &spool)?;
        let started = Instant::now();
        let id = geodb_backup(bench, &vars, PREFIX).await?;
        let elapsed = started.elapsed();
        report.figure(
            "base_backup_geodb_mib_per_s",
            mib_per_s(pgdata_bytes, elapsed),
        );
        report.context("base_backup_geodb_id", id.clone());
        geodb_id = Some(id);
    } else {
        report.figure("base_backup_geodb_mib_per_s", f64::NAN);
    }
    super::dump::measure(bench, &pg, db_bytes, report).await?;
    let stored = list_sizes(&bench.s3, "pgbackrest/backup/backup/").await?;
    report.context(
        "base_backup_pgbackrest_stored_mib",
        mib(stored.iter().map(|(_, s)| s).sum()),
    );
    drop(pg);
    restores(
        bench,
        pgbr,
        report,
        pgdata_bytes,
        geodb_id.filter(|_| geodb.restore),
    )
    .await
}

/// The loaded cluster, restarted with the archive settings of `geodb wal-push` in its
/// environment (PostgreSQL passes its own environment to `archive_command`).
async fn load_with_archive_env(bench: &Bench) -> anyhow::Result<(Pg, u64)> {
    let (mut pg, db_bytes) = load(bench).await?;
    pg.stop();
    let spool = bench.subdir("db/wal-spool")?;
    let mut vars = bench.geodb_vars(PREFIX, &spool, "zstd")?;
    vars.insert("PGDATA".into(), pg.data.display().to_string());
    let mut pg = Pg::start(
        bench,
        &pg.data.clone(),
        &["archive_mode=on".to_owned()],
        &vars,
    )?;
    pg.connect().await?;
    Ok((pg, db_bytes))
}

async fn restores(
    bench: &Bench,
    pgbr: &PgBackRest,
    report: &mut Report,
    pgdata_bytes: u64,
    geodb_id: Option<String>,
) -> anyhow::Result<()> {
    progress("  pgbackrest restore");
    let target = bench.dir.path().join("db").join("restored-pgbackrest");
    std::fs::create_dir_all(&target)?;
    bench.chown(&target)?;
    let started = Instant::now();
    let path = format!("--pg1-path={}", target.display());
    pgbr.run(bench, STANZA, &["restore", &path]).await?;
    let restore_pgbr = started.elapsed();
    report.figure(
        "restore_pgbackrest_mib_per_s",
        mib_per_s(pgdata_bytes, restore_pgbr),
    );
    let replay = start_restored(
        bench,
        &target,
        &pgbr.restore_command(bench, STANZA, &target),
        &HashMap::new(),
    )
    .await?;
    report.context(
        "restore_rto_1gb_pgbackrest_s",
        (restore_pgbr + replay).as_secs_f64(),
    );
    std::fs::remove_dir_all(&target)?;

    let Some(id) = geodb_id else {
        report.figure("restore_geodb_mib_per_s", f64::NAN);
        report.figure_with("restore_rto_1gb_s", f64::NAN, Target::Max(120.0));
        return Ok(());
    };
    progress(format!("  geodb restore of {id}"));
    report.context(
        "restore_geodb_how",
        "geodb::backup::restore_for (the recovery bootstrap's restore; no subcommand) in the bench process, then PostgreSQL with geodb wal-fetch",
    );
    let target = bench.dir.path().join("db").join("restored-geodb");
    let spool = bench.subdir("db/restore-spool")?;
    let vars = bench.geodb_vars(PREFIX, &spool, "zstd")?;
    let started = Instant::now();
    restore::restore_latest(bench, &vars, &target).await?;
    let restore_geodb = started.elapsed();
    report.figure(
        "restore_geodb_mib_per_s",
        mib_per_s(pgdata_bytes, restore_geodb),
    );
    let command = format!("{} wal-fetch %f %p", bench.geodb.display());
    let replay = start_restored(bench, &target, &command, &vars).await?;
    report.figure_with(
        "restore_rto_1gb_s",
        (restore_geodb + replay).as_secs_f64(),
        Target::Max(120.0),
    );
    Ok(())
}

/// Start a restored directory with `restore_command`, wait until it is out of
/// recovery, check the pgbench rows; how long until it was out of recovery.
async fn start_restored(
    bench: &Bench,
    data: &Path,
    restore_command: &str,
    vars: &HashMap<String, String>,
) -> anyhow::Result<Duration> {
    let (_pg, client, elapsed) = recover(bench, data, restore_command, vars).await?;
    let rows = query_i64(&client, "SELECT count(*) FROM pgbench_accounts").await?;
    if rows != scale() * 100_000 {
        bail!(
            "restored {rows} pgbench_accounts rows, not {}",
            scale() * 100_000
        );
    }
    progress(format!(
        "  restored server out of recovery after {:.1} s",
        elapsed.as_secs_f64()
    ));
    Ok(elapsed)
}

/// Start a restored directory with `restore_command` to the end of the archive; the
/// server, a connection, and the time until it was out of recovery.
pub async fn recover(
    bench: &Bench,
    data: &Path,
    restore_command: &str,
    vars: &HashMap<String, String>,
) -> anyhow::Result<(Pg, tokio_postgres::Client, Duration)> {
    std::fs::write(data.join("recovery.signal"), "")?;
    bench.chown(data)?;
    std::fs::set_permissions(data, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let started = Instant::now();
    let settings = [
        format!("restore_command={restore_command}"),
        "recovery_target_timeline=latest".to_owned(),
        "archive_mode=off".to_owned(),
    ];
    let mut pg = Pg::start(bench, data, &settings, vars)?;
    let client = pg.connect_within(Duration::from_secs(600)).await?;
    pg.wait_out_of_recovery(&client, Duration::from_secs(600))
        .await?;
    Ok((pg, client, started.elapsed()))
}
