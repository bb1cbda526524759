//! Phase 1, WAL push: real segments written by PostgreSQL 15 (rows of varied text and
//! numbers, checkpoints, so with full-page images), copied aside by a plain
//! `archive_command`; then a backlog of all of them drained by each tool, called once
//! per segment, oldest first, from a `pg_wal` directory whose `archive_status/*.ready`
//! files say what waits, as PostgreSQL's archiver calls `archive_command` (it renames a
//! `.ready` to `.done` after each success).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::stream::{self, StreamExt as _, TryStreamExt as _};
use serde_json::json;

use super::pg::{query_i64, Pg};
use super::pgbackrest::PgBackRest;
use super::report::{Report, Target};
use super::{list_sizes, mib, mib_per_s, progress, Bench};

pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// The segments written for the bench, and the (stopped) cluster they came from.
pub struct Segments {
    pub names: Vec<String>,
    pub dir: PathBuf,
    pub source_data: PathBuf,
}

/// How one drain went.
pub struct Drain {
    pub elapsed: Duration,
    pub calls: Vec<Duration>,
    pub failures: usize,
    pub stored_bytes: u64,
    pub stored_objects: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    GeodbZstd,
    GeodbNone,
    PgbackrestAsync,
    PgbackrestSync,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::GeodbZstd => "geodb-zstd",
            Tool::GeodbNone => "geodb-none",
            Tool::PgbackrestAsync => "pgbackrest-async",
            Tool::PgbackrestSync => "pgbackrest-sync",
        }
    }

    /// The pgBackRest stanza (own repo path) of round `round`.
    fn stanza(self, round: usize) -> String {
        match self {
            Tool::PgbackrestSync => format!("walsync{round}"),
            _ => format!("walasync{round}"),
        }
    }
}

/// Rounds of the four drains, the second in the reverse order (`BENCH_WAL_ROUNDS`, 2):
/// the figures are over both, so no tool gains from its place in the order.
pub fn rounds() -> usize {
    std::env::var("BENCH_WAL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(2)
}

/// Write at least `count` full segments on a fresh cluster archiving to a directory;
/// create the pgBackRest stanzas of this phase on it while it runs.
pub async fn generate(
    bench: &Bench,
    pgbr: &mut PgBackRest,
    count: usize,
) -> anyhow::Result<Segments> {
    let root = bench.subdir("walsrc")?;
    let data = root.join("data");
    let archive = bench.subdir("walsrc/archive")?;
    Pg::initdb(bench, &data).await?;
    let settings = [
        "archive_mode=on".to_owned(),
        format!(
            "archive_command=test ! -f {0}/%f && cp %p {0}/%f",
            archive.display()
        ),
        // Checkpoints every 256 MB of WAL: full-page images after each, as in production.
        "max_wal_size=256MB".to_owned(),
        "synchronous_commit=off".to_owned(),
    ];
    let mut pg = Pg::start(bench, &data, &settings, &HashMap::new())?;
    let client = pg.connect().await?;
    for round in 1..=rounds() {
        for (tool, archive_async) in [(Tool::PgbackrestAsync, true), (Tool::PgbackrestSync, false)]
        {
            pgbr.stanza_create(bench, &tool.stanza(round), &pg, archive_async)
                .await?;
        }
    }
    client
        .batch_execute(
            "CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz NOT NULL,
                 device int NOT NULL, reading double precision, city text, note text);
             CREATE INDEX ON events (device, at);",
        )
        .await?;
    let started = Instant::now();
    let mut batch = 0i64;
    while segment_names(&archive)?.len() < count {
        write_batch(&client, batch).await?;
        batch += 1;
        if batch % 20 == 0 {
            progress(format!(
                "  {} segments archived so far ({:.0} s)",
                segment_names(&archive)?.len(),
                started.elapsed().as_secs_f64()
            ));
        }
    }
    let rows = query_i64(&client, "SELECT count(*) FROM events").await?;
    drop(client);
    pg.stop();
    let mut names = segment_names(&archive)?;
    names.truncate(count);
    progress(format!(
        "{} segments written ({rows} rows) in {:.0} s",
        names.len(),
        started.elapsed().as_secs_f64()
    ));
    Ok(Segments {
        names,
        dir: archive,
        source_data: data,
    })
}

/// 50 000 rows of sensor-like data: varied numbers, a city, a hex note of random length.
async fn write_batch(client: &tokio_postgres::Client, batch: i64) -> anyhow::Result<()> {
    let sql = format!(
        "INSERT INTO events (at, device, reading, city, note)
         SELECT now() - (g || ' seconds')::interval, (random() * 5000)::int,
                round((random() * 1000)::numeric, 3),
                (ARRAY['Lisboa','Porto','Zürich','Nairobi','Quito','Osaka','Tromsø','Perth'])[1 + {batch} % 8 + (g % 3)],
                substr(md5(random()::text) || md5(g::text) || md5(random()::text), 1, 8 + (random() * 88)::int)
         FROM generate_series(1, 50000) AS g"
    );
    client.batch_execute(&sql).await?;
    Ok(())
}

/// The full segment names in `dir`, sorted.
fn segment_names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    names.sort();
    Ok(names)
}

/// A fresh data directory whose `pg_wal` holds (hard links to) every segment, each
/// marked ready.
fn stage(bench: &Bench, segments: &Segments, run: &str) -> anyhow::Result<PathBuf> {
    let data = bench.dir.path().join(format!("run-{run}")).join("data");
    let status = data.join("pg_wal").join("archive_status");
    std::fs::create_dir_all(&status)?;
    for name in &segments.names {
        std::fs::hard_link(segments.dir.join(name), data.join("pg_wal").join(name))?;
        std::fs::write(status.join(format!("{name}.ready")), "")?;
    }
    // What pgBackRest reads of the data directory (pg1-path must hold the pg_wal).
    std::fs::create_dir_all(data.join("global"))?;
    for file in ["global/pg_control", "PG_VERSION"] {
        std::fs::copy(segments.source_data.join(file), data.join(file))?;
    }
    bench.chown(data.parent().context("a parent")?)?;
    Ok(data)
}

/// Drain the backlog with `tool` in round `round`, timed from the first call to the
/// last success.
pub async fn drain(
    bench: &Bench,
    pgbr: &mut PgBackRest,
    segments: &Segments,
    tool: Tool,
    round: usize,
) -> anyhow::Result<Drain> {
    let run = Variant {
        name: format!("{}-r{round}", tool.name()),
        geodb: bench.geodb.clone(),
        vars: HashMap::new(),
        stanza: tool.stanza(round),
    };
    drain_as(bench, pgbr, segments, tool, &run).await
}

/// Another `geodb` build or environment to drain with (`BENCH_WAL_VARIANTS`, for
/// investigating wal-push: `name|/path/to/geodb|VAR=value VAR=value;…`).
pub struct Variant {
    pub name: String,
    pub geodb: PathBuf,
    pub vars: HashMap<String, String>,
    /// pgBackRest's stanza (unused by geodb).
    pub stanza: String,
}

pub fn variants() -> Vec<Variant> {
    let spec = std::env::var("BENCH_WAL_VARIANTS").unwrap_or_default();
    spec.split(';')
        .filter_map(|entry| {
            let mut parts = entry.trim().splitn(3, '|');
            let name = parts.next()?.trim();
            let geodb = parts.next()?.trim();
            let vars = parts
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            (!name.is_empty()).then(|| Variant {
                name: format!("geodb-{name}"),
                geodb: PathBuf::from(geodb),
                vars,
                stanza: String::new(),
            })
        })
        .collect()
}

async fn drain_as(
    bench: &Bench,
    pgbr: &mut PgBackRest,
    segments: &Segments,
    tool: Tool,
    run: &Variant,
) -> anyhow::Result<Drain> {
    let data = stage(bench, segments, &run.name)?;
    if matches!(tool, Tool::PgbackrestAsync | Tool::PgbackrestSync) {
        pgbr.set_pg_path(bench, &run.stanza, &data)?;
    }
    let spool = bench.subdir(&format!("run-{}/spool", run.name))?;
    let prefix = format!("wal-{}", run.name);
    let compression = if tool == Tool::GeodbNone {
        "none"
    } else {
        "zstd"
    };
    let mut vars = bench.geodb_vars(&prefix, &spool, compression)?;
    vars.insert("PGDATA".into(), data.display().to_string());
    vars.extend(run.vars.clone());
    let status = data.join("pg_wal").join("archive_status");
    let (mut calls, mut failures) = (Vec::new(), 0usize);
    let started = Instant::now();
    for name in &segments.names {
        loop {
            let call = Instant::now();
            let out = match tool {
                Tool::GeodbZstd | Tool::GeodbNone => {
                    let mut cmd = bench.command(&run.geodb, &data, &vars);
                    cmd.arg("wal-push").arg(format!("pg_wal/{name}"));
                    cmd.output().await?
                }
                Tool::PgbackrestAsync | Tool::PgbackrestSync => {
                    let path = data.join("pg_wal").join(name).display().to_string();
                    let mut cmd = pgbr.command(bench, &run.stanza, &["archive-push", &path]);
                    cmd.output().await?
                }
            };
            if out.status.success() {
                calls.push(call.elapsed());
                std::fs::rename(
                    status.join(format!("{name}.ready")),
                    status.join(format!("{name}.done")),
                )?;
                break;
            }
            failures += 1;
            progress(format!(
                "  {} failed on {name}: {}",
                run.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            if failures > 5 {
                bail!("{}: too many failures", run.name);
            }
            // PostgreSQL's archiver waits a second before it tries again.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let elapsed = started.elapsed();
    pgbr.settle(Duration::from_secs(60));
    let (stored_objects, stored_bytes) = stored(bench, tool, &prefix, &run.stanza).await?;
    let _ = std::fs::remove_dir_all(data.parent().unwrap_or(&data));
    Ok(Drain {
        elapsed,
        calls,
        failures,
        stored_bytes,
        stored_objects,
    })
}

/// Segment objects the tool left in the bucket and their bytes.
async fn stored(
    bench: &Bench,
    tool: Tool,
    prefix: &str,
    stanza: &str,
) -> anyhow::Result<(usize, u64)> {
    let list_prefix = match tool {
        Tool::GeodbZstd | Tool::GeodbNone => format!("{prefix}/wal/"),
        _ => format!("pgbackrest/{stanza}/archive/{stanza}/"),
    };
    let objects: Vec<(String, u64)> = list_sizes(&bench.s3, &list_prefix)
        .await?
        .into_iter()
        .filter(|(key, _)| {
            let file = key.rsplit('/').next().unwrap_or_default();
            file.len() >= 24 && file[..24].bytes().all(|b| b.is_ascii_hexdigit())
        })
        .collect();
    Ok((objects.len(), objects.iter().map(|(_, s)| s).sum()))
}

/// The four drains, side by side, into the report.
pub async fn measure(
    bench: &Bench,
    pgbr: &mut PgBackRest,
    count: usize,
    report: &mut Report,
) -> anyhow::Result<Segments> {
    progress(format!("phase 1: writing {count} WAL segments"));
    let segments = generate(bench, pgbr, count).await?;
    let raw = SEGMENT_BYTES * segments.names.len() as u64;
    // Every segment in the page cache before the first run, as for the later ones.
    for name in &segments.names {
        std::fs::read(segments.dir.join(name))?;
    }
    warm_up(bench).await?;
    let order = [
        Tool::GeodbZstd,
        Tool::PgbackrestAsync,
        Tool::GeodbNone,
        Tool::PgbackrestSync,
    ];
    // Seconds per tool over every round; MiB/s = all bytes pushed / all that time.
    let mut seconds: HashMap<&str, f64> = HashMap::new();
    let mut details = serde_json::Map::new();
    for round in 1..=rounds() {
        let mut tools = order.to_vec();
        if round % 2 == 0 {
            tools.reverse();
        }
        for tool in tools {
            let d = drain_one(bench, pgbr, &segments, tool, round).await?;
            *seconds.entry(tool.name()).or_default() += d.elapsed.as_secs_f64();
            details.insert(format!("{}-r{round}", tool.name()), drain_details(&d, raw));
        }
    }
    let total = raw * rounds() as u64;
    let rates: HashMap<&str, f64> = seconds
        .iter()
        .map(|(k, secs)| (*k, mib(total) / secs.max(1e-9)))
        .collect();
    let geodb = rates[Tool::GeodbZstd.name()];
    let pgbackrest = rates[Tool::PgbackrestAsync.name()];
    report.figure("wal_push_geodb_mib_per_s", geodb);
    report.figure("wal_push_pgbackrest_mib_per_s", pgbackrest);
    report.figure_with("wal_push_ratio", geodb / pgbackrest, Target::Min(1.0));
    report.figure(
        "wal_push_geodb_none_mib_per_s",
        rates[Tool::GeodbNone.name()],
    );
    report.figure(
        "wal_push_pgbackrest_sync_mib_per_s",
        rates[Tool::PgbackrestSync.name()],
    );
    report.figure("wal_push_segments_count", segments.names.len() as f64);
    report.context("wal_segments", segments.names.len());
    report.context("wal_push_rounds", rounds());
    report.context("wal_raw_mib", mib(raw));
    report.context("wal_push_runs", details);
    let mut extra = serde_json::Map::new();
    for variant in variants() {
        progress(format!("  draining with {}", variant.name));
        let d = drain_as(bench, pgbr, &segments, Tool::GeodbZstd, &variant).await?;
        let rate = mib_per_s(raw, d.elapsed);
        progress(format!(
            "  {}: {:.1} s, {rate:.1} MiB/s",
            variant.name,
            d.elapsed.as_secs_f64()
        ));
        let mut details = drain_details(&d, raw);
        details["mib_per_s"] = json!(rate);
        details["vars"] = json!(variant.vars);
        extra.insert(variant.name.clone(), details);
    }
    if !extra.is_empty() {
        report.context("wal_push_variants", extra);
    }
    match super::profile::measure(bench, &segments).await {
        Ok(profile) => report.context("wal_push_geodb_profile", profile),
        Err(e) => report.context("wal_push_geodb_profile", format!("failed: {e:#}")),
    }
    Ok(segments)
}

/// 512 MiB into a fresh server before anything is timed: SeaweedFS creates its first
/// volumes on the first writes, which would slow whichever tool ran first.
async fn warm_up(bench: &Bench) -> anyhow::Result<()> {
    let started = Instant::now();
    let client = bench.s3.client();
    let bucket = bench.s3.bucket.as_str();
    stream::iter(0..128u64)
        .map(|i| async move {
            // Not compressible, not all alike.
            let mut state = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let body: Vec<u8> = (0..4 << 20)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            client
                .put_object()
                .bucket(bucket)
                .key(format!("warm-up/{i}"))
                .body(body.into())
                .send()
                .await
                .map(drop)
                .map_err(|e| {
                    anyhow::anyhow!("warm-up PUT: {}", aws_sdk_s3::error::DisplayErrorContext(e))
                })
        })
        .buffer_unordered(4)
        .try_collect::<Vec<()>>()
        .await?;
    progress(format!(
        "  S3 server warmed up with 512 MiB in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// One timed drain, said on stderr and checked against the bucket.
async fn drain_one(
    bench: &Bench,
    pgbr: &mut PgBackRest,
    segments: &Segments,
    tool: Tool,
    round: usize,
) -> anyhow::Result<Drain> {
    let count = segments.names.len();
    progress(format!(
        "  round {round}: draining {count} segments with {}",
        tool.name()
    ));
    let d = drain(bench, pgbr, segments, tool, round).await?;
    progress(format!(
        "  {}: {:.1} s, {:.1} MiB/s, {} objects, {:.0} MiB stored",
        tool.name(),
        d.elapsed.as_secs_f64(),
        mib_per_s(SEGMENT_BYTES * count as u64, d.elapsed),
        d.stored_objects,
        mib(d.stored_bytes)
    ));
    if d.stored_objects != count {
        bail!(
            "{}: {} segment objects in the bucket, {count} pushed",
            tool.name(),
            d.stored_objects
        );
    }
    Ok(d)
}

fn drain_details(d: &Drain, raw: u64) -> serde_json::Value {
    let mut ms: Vec<f64> = d.calls.iter().map(|c| c.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    // A call that returns in under 30 ms found its segment done already.
    let working = ms.iter().filter(|m| **m >= 30.0).count();
    json!({
        "seconds": d.elapsed.as_secs_f64(),
        "calls": d.calls.len(),
        "calls_over_30ms": working,
        "call_ms_p50": crate::bench::percentile(&ms, 50.0),
        "call_ms_p90": crate::bench::percentile(&ms, 90.0),
        "call_ms_max": ms.last().copied().unwrap_or_default(),
        "call_ms_sum": ms.iter().sum::<f64>(),
        "failures": d.failures,
        "stored_mib": mib(d.stored_bytes),
        "stored_to_raw_ratio": d.stored_bytes as f64 / raw as f64,
    })
}
