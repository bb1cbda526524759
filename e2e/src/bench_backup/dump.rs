//! Logical dumps of the loaded database, side by side: `geodb dump` (`pg_dump -Fc`
//! uncompressed, zstd on the way, streamed into S3, with the roles, its manifest last)
//! against a plain `pg_dump -Fc` (its default gzip) into a local file, the usual
//! scheduled-dump script.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use super::pg::{backup_vars, Pg, PASSWORD};
use super::report::Report;
use super::{list_sizes, mib, mib_per_s, progress, Bench};

const PREFIX: &str = "geodb-dump";

/// Figures `dump_geodb_mib_per_s`, `dump_pg_dump_file_mib_per_s` and
/// `dump_speed_ratio` (geodb's speed over pg_dump's), by the database's size.
pub async fn measure(
    bench: &Bench,
    pg: &Pg,
    db_bytes: u64,
    report: &mut Report,
) -> anyhow::Result<()> {
    progress("  geodb dump");
    let spool = bench.subdir("db/dump-spool")?;
    let mut vars = backup_vars(bench, pg, PREFIX, &spool)?;
    vars.insert(geodb::pod_contract::env::DUMP_KEEP.into(), "1".into());
    let mut cmd = bench.command(&bench.geodb, Path::new("/"), &vars);
    cmd.arg("dump");
    let started = Instant::now();
    bench.run(cmd, "geodb dump").await?;
    let geodb = started.elapsed();
    let stored: u64 = list_sizes(&bench.s3, &format!("{PREFIX}/dumps/"))
        .await?
        .iter()
        .map(|(_, size)| size)
        .sum();

    progress("  pg_dump -Fc -f <file>");
    let dir = bench.subdir("db/pg-dump")?;
    let file = dir.join("postgres.dump");
    let mut cmd = bench.command(&bench.pg_bin.join("pg_dump"), &dir, &HashMap::new());
    cmd.args(["-Fc", "-h", "127.0.0.1", "-p", &pg.port.to_string()])
        .args(["-U", "postgres", "-d", "postgres", "-f"])
        .arg(&file)
        .env("PGPASSWORD", PASSWORD);
    let started = Instant::now();
    bench.run(cmd, "pg_dump").await?;
    let plain = started.elapsed();
    let file_bytes = std::fs::metadata(&file)?.len();
    std::fs::remove_dir_all(&dir)?;

    report.figure("dump_geodb_mib_per_s", mib_per_s(db_bytes, geodb));
    report.figure("dump_pg_dump_file_mib_per_s", mib_per_s(db_bytes, plain));
    report.figure(
        "dump_speed_ratio",
        plain.as_secs_f64() / geodb.as_secs_f64().max(f64::EPSILON),
    );
    report.context("dump_geodb_stored_mib", mib(stored));
    report.context("dump_pg_dump_file_mib", mib(file_bytes));
    Ok(())
}
