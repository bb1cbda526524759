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
        "geodb_zstd_mib_per_s_1core".into(),
        json!(mib_per_s(raw, started.elapsed())),
    );
    out.insert(
        "geodb_zstd_stored_to_raw".into(),
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
    for (tool, levels) in [("zstd", &[1u32, 3][..]), ("lz4", &[1u32][..])] {
        if let Some(levels) = cli_benchmark(tool, levels, segments)? {
            out.insert(format!("{tool}_cli_benchmark"), levels);
        }
    }
    out.insert("geodb_zstd_stored_mib".into(), json!(mib(stored)));
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

/// `<tool> -b<level> -i1` on 16 concatenated segments, one core; per level: stored to
/// raw and compression MB/s.
fn cli_benchmark(tool: &str, levels: &[u32], segments: &Segments) -> anyhow::Result<Option<Value>> {
    let Some(program) = super::which(tool) else {
        return Ok(None);
    };
    let sample = segments.dir.join("profile-sample");
    let mut all = Vec::new();
    for name in segments.names.iter().take(16) {
        all.extend(std::fs::read(segments.dir.join(name))?);
    }
    std::fs::write(&sample, &all)?;
    let mut out = Map::new();
    for level in levels {
        let run = std::process::Command::new(&program)
            .arg(format!("-b{level}"))
            .arg("-i1")
            // zstd would use every core by default; lz4 has no such option.
            .args(if tool == "zstd" { &["-T1"][..] } else { &[] })
            .arg(&sample)
            .output();
        let Ok(run) = run else { continue };
        let text = String::from_utf8_lossy(&run.stderr).into_owned()
            + &String::from_utf8_lossy(&run.stdout);
        if let Some((ratio, speed)) = parse_benchmark(&text) {
            out.insert(
                format!("level_{level}"),
                json!({ "stored_to_raw": 1.0 / ratio, "compress_mb_per_s": speed }),
            );
        }
    }
    let _ = std::fs::remove_file(&sample);
    Ok(Some(Value::Object(out)))
}

/// The last complete progress line, like
/// `|-sample : 268435456 ->  98765432 (x2.718),  250.1 MB/s, 900.2 MB/s`: ratio and the
/// compression speed.
fn parse_benchmark(text: &str) -> Option<(f64, f64)> {
    text.split(['\r', '\n'])
        .rev()
        .filter(|line| line.contains("->") && line.matches("MB/s").count() >= 2)
        .filter_map(|line| {
            let inside = line.split('(').nth(1)?.split(')').next()?;
            let ratio: f64 = inside.trim().trim_start_matches('x').parse().ok()?;
            let speed: f64 = line
                .split("),")
                .nth(1)?
                .split("MB/s")
                .next()?
                .trim()
                .parse()
                .ok()?;
            Some((ratio, speed))
        })
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_cli_benchmarks() {
        let zstd = " |-s :  90655837 -> \r |-s :  90655837 ->  68325880 (x1.327),  630.8 MB/s, 1468.6 MB/s\r 1#\n";
        assert_eq!(parse_benchmark(zstd), Some((1.327, 630.8)));
        let lz4 = "\r =-s :  90655837 ->  91011352 (0.996),11457.5 MB/s ,16715.0 MB/s\r 1#\n";
        assert_eq!(parse_benchmark(lz4), Some((0.996, 11457.5)));
        assert_eq!(parse_benchmark("nothing"), None);
    }
}
