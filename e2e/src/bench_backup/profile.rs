//! Where `geodb wal-push`'s time goes, phase by phase, on the same segments and server:
//! read + SHA-256, zstd at geodb's level, HEAD round trips, PUTs at its parallelism, the
//! cost of one process start; and what zstd's other levels and lz4 (pgBackRest's
//! choice) cost on this data (the `zstd`/`lz4` programs' benchmark mode, when present).

use std::collections::HashMap;
use std::time::Instant;

use anyhow::anyhow;
use futures::stream::{self, StreamExt as _, TryStreamExt as _};
use geodb::archive::checksum::sha256_hex;
use geodb::archive::compress;
use geodb::archive::segment::Compression;
use geodb::archive::store::Store;
use geodb::archive::ArchiveConfig;
use serde_json::{json, Map, Value};

use super::wal::{Segments, SEGMENT_BYTES};
use super::{mib, mib_per_s, progress, Bench};

/// Segments the profile works on (a sample keeps it short).
const SAMPLE: usize = 32;

pub async fn measure(bench: &Bench, segments: &Segments) -> anyhow::Result<Value> {
    progress("  profiling geodb wal-push's phases");
    let names: Vec<&String> = segments.names.iter().take(SAMPLE).collect();
    let raw = SEGMENT_BYTES * names.len() as u64;
    let mut out = Map::new();
    out.insert("segments".into(), json!(names.len()));

    let started = Instant::now();
    let mut contents = Vec::new();
    for name in &names {
        let content = std::fs::read(segments.dir.join(name))?;
        let sum = sha256_hex(&content);
        contents.push((name.to_string(), content, sum));
    }
    out.insert(
        "read_sha256_mib_per_s_1core".into(),
        json!(mib_per_s(raw, started.elapsed())),
    );

    let started = Instant::now();
    let mut bodies = Vec::new();
    for (name, content, sum) in &contents {
        bodies.push((
            name.clone(),
            compress::encode(content, Compression::Zstd)?,
            sum.clone(),
        ));
    }
    let stored: u64 = bodies.iter().map(|(_, b, _)| b.len() as u64).sum();
    out.insert(
        "zstd3_mib_per_s_1core".into(),
        json!(mib_per_s(raw, started.elapsed())),
    );
    out.insert(
        "zstd3_stored_to_raw".into(),
        json!(stored as f64 / raw as f64),
    );
    drop(contents);

    let spool = bench.subdir("profile-spool")?;
    let vars = bench.geodb_vars("profile", &spool, "zstd")?;
    let config = ArchiveConfig::from_lookup(|n| vars.get(n).cloned(), bench.dir.path())
        .map_err(|e| anyhow!("{e}"))?;
    let store = Store::new(&config).map_err(|e| anyhow!("{e}"))?;
    let started = Instant::now();
    for i in 0..50 {
        let key = format!("profile/wal/missing-{i}");
        store
            .head("missing", &key)
            .await
            .map_err(|e| anyhow!("{e}"))?;
    }
    out.insert(
        "head_ms".into(),
        json!(started.elapsed().as_secs_f64() * 1000.0 / 50.0),
    );
    for parallel in [1usize, 4] {
        let started = Instant::now();
        stream::iter(bodies.iter())
            .map(|(name, body, sum)| {
                let key = format!("profile/p{parallel}/{name}.zst");
                let store = &store;
                async move { store.put(name, &key, body, sum).await }
            })
            .buffer_unordered(parallel)
            .try_collect::<Vec<()>>()
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let elapsed = started.elapsed();
        out.insert(
            format!("put_{parallel}_at_once_raw_mib_per_s"),
            json!(mib_per_s(raw, elapsed)),
        );
        out.insert(
            format!("put_{parallel}_at_once_wire_mib_per_s"),
            json!(mib_per_s(stored, elapsed)),
        );
    }
    out.insert(
        "process_start_ms".into(),
        json!(process_start_ms(bench, segments, &vars).await?),
    );
    for (tool, args) in [
        ("zstd", ["-b1", "-e3", "-T1"]),
        ("lz4", ["-b1", "-e1", "-T1"]),
    ] {
        if let Some(levels) = cli_benchmark(tool, &args, segments)? {
            out.insert(format!("{tool}_cli_benchmark"), levels);
        }
    }
    out.insert("zstd3_stored_mib".into(), json!(mib(stored)));
    Ok(Value::Object(out))
}

/// A `geodb wal-push` of a segment already in the bucket, with nothing ready beside it:
/// process start, configuration, client, read and hash, one HEAD (mean of five).
async fn process_start_ms(
    bench: &Bench,
    segments: &Segments,
    vars: &HashMap<String, String>,
) -> anyhow::Result<f64> {
    let data = bench.subdir("profile-data")?;
    let wal = bench.subdir("profile-data/pg_wal")?;
    let name = segments
        .names
        .first()
        .ok_or_else(|| anyhow!("no segments"))?;
    std::fs::hard_link(segments.dir.join(name), wal.join(name))?;
    let mut total = 0.0;
    for i in 0..6 {
        let started = Instant::now();
        let mut cmd = bench.command(&bench.geodb, &data, vars);
        cmd.arg("wal-push").arg(format!("pg_wal/{name}"));
        bench.run(cmd, "geodb wal-push").await?;
        // The first one uploads; the others find it there.
        if i > 0 {
            total += started.elapsed().as_secs_f64() * 1000.0;
        }
    }
    Ok(total / 5.0)
}

/// `<tool> -b…` on 16 concatenated segments; per level: ratio, compression MB/s.
fn cli_benchmark(tool: &str, args: &[&str], segments: &Segments) -> anyhow::Result<Option<Value>> {
    let Some(program) = super::which(tool) else {
        return Ok(None);
    };
    let sample = segments.dir.join("profile-sample");
    let mut all = Vec::new();
    for name in segments.names.iter().take(16) {
        all.extend(std::fs::read(segments.dir.join(name))?);
    }
    std::fs::write(&sample, &all)?;
    let out = std::process::Command::new(program)
        .args(args)
        .arg(&sample)
        .output()?;
    let _ = std::fs::remove_file(&sample);
    // Lines like ` 3#profile-sample :268435456 -> 98765432 (2.718), 250.1 MB/s, 900.2 MB/s`.
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let mut levels = Map::new();
    for line in text.split(['\n', '\r']) {
        let Some((level, rest)) = line.trim().split_once('#') else {
            continue;
        };
        let ratio = rest.split('(').nth(1).and_then(|r| r.split(')').next());
        let speed = rest
            .split("),")
            .nth(1)
            .and_then(|r| r.split_whitespace().next());
        if let (Some(ratio), Some(speed)) = (ratio, speed) {
            levels.insert(
                format!("level_{}", level.trim()),
                json!({ "ratio": ratio.trim().parse::<f64>().ok(), "compress_mb_per_s": speed.parse::<f64>().ok() }),
            );
        }
    }
    Ok(Some(Value::Object(levels)))
}
