//! `make bench-backup`: geodb's WAL push, base backup and restore against pgBackRest's,
//! and the RPO of the WAL archive, on this host with one SeaweedFS S3 server and
//! PostgreSQL 15 (no Kubernetes). See `src/bin/bench_backup.rs`.

pub mod base;
pub mod dump;
pub mod pg;
pub mod pgbackrest;
pub mod profile;
pub mod report;
pub mod restore;
pub mod rpo;
pub mod wal;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use geodb::archive::config as env;

use crate::s3::{self, S3Server, Tls};

/// The bucket every tool writes to, each under its own prefix.
pub const BUCKET: &str = "bench-backup";
/// libpq's variables, which must never leak in from the caller either (the archive's
/// and backup's are `hostpg::ARCHIVE_VARS`).
const LIBPQ_VARS: [&str; 4] = ["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD"];

/// Every variable cleared from the commands the bench runs.
pub fn cleared_vars() -> impl Iterator<Item = &'static str> {
    crate::hostpg::ARCHIVE_VARS.into_iter().chain(LIBPQ_VARS)
}

/// Progress on stderr, with the time since the start.
pub fn progress(message: impl std::fmt::Display) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(Instant::now);
    eprintln!("[{:>7.1}s] {message}", start.elapsed().as_secs_f64());
}

/// A directory removed (with everything in it) on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(what: &str) -> anyhow::Result<Self> {
        Ok(Self(s3::temp_dir(what)?))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("GEODB_KEEP_TEMP").is_some_and(|v| v == "1") {
            eprintln!("kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Everything the phases share: the programs, the S3 server, who runs PostgreSQL.
pub struct Bench {
    /// PostgreSQL's server programs.
    pub pg_bin: PathBuf,
    /// A copy of the release `geodb` every user can run.
    pub geodb: PathBuf,
    pub pgbackrest: PathBuf,
    /// As root, PostgreSQL's programs run as `postgres` (they refuse root).
    pub user: Option<(u32, u32)>,
    pub tls: Tls,
    access_key_file: PathBuf,
    secret_key_file: PathBuf,
    // Dropped in this order: the server, then its directories.
    pub s3: S3Server,
    pub dir: TempDir,
}

impl Bench {
    pub async fn start(geodb: &Path, pg_bin: &Path, weed: &Path) -> anyhow::Result<Self> {
        let dir = TempDir::new("bench-backup")?;
        let pgbackrest = which("pgbackrest").context("pgbackrest is not on PATH")?;
        let tls = Tls::generate(dir.path())?.context("no openssl to make the S3 server's CA")?;
        let s3 = S3Server::start_with(&roomy_weed(dir.path(), weed)?, BUCKET, Some(&tls)).await?;
        let secrets = dir.path().join("secrets");
        std::fs::create_dir_all(&secrets)?;
        let (access_key_file, secret_key_file) = s3.write_credentials(&secrets)?;
        let copy = dir.path().join("geodb");
        std::fs::copy(geodb, &copy).with_context(|| format!("copying {}", geodb.display()))?;
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))?;
        let bench = Self {
            pg_bin: pg_bin.to_path_buf(),
            geodb: copy,
            pgbackrest,
            user: pg_user(),
            tls,
            access_key_file,
            secret_key_file,
            s3,
            dir,
        };
        bench.chown(bench.dir.path())?;
        Ok(bench)
    }

    pub fn https_endpoint(&self) -> anyhow::Result<&str> {
        self.s3
            .https_endpoint
            .as_deref()
            .context("the S3 server has no HTTPS port")
    }

    /// A new directory under the bench's, owned by PostgreSQL's user.
    pub fn subdir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path)?;
        // Every directory made on the way, not only the last.
        let mut dir = self.dir.path().to_path_buf();
        for part in Path::new(name).components() {
            dir.push(part);
            self.chown_one(&dir)?;
        }
        Ok(path)
    }

    fn chown_one(&self, path: &Path) -> anyhow::Result<()> {
        if let Some((uid, gid)) = self.user {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", path.display()))?;
        }
        Ok(())
    }

    /// Hand `path` and everything under it to PostgreSQL's user.
    pub fn chown(&self, path: &Path) -> anyhow::Result<()> {
        let Some((uid, gid)) = self.user else {
            return Ok(());
        };
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", path.display()))?;
        if path.is_dir() && !path.is_symlink() {
            for entry in std::fs::read_dir(path)? {
                self.chown(&entry?.path())?;
            }
        }
        Ok(())
    }

    /// The `GEODB_S3_*` and spool settings of `wal-push`/`wal-fetch`/`backup` for one
    /// prefix of the bucket, over HTTPS with the test CA.
    pub fn geodb_vars(
        &self,
        prefix: &str,
        spool: &Path,
        compression: &str,
    ) -> anyhow::Result<HashMap<String, String>> {
        Ok([
            (env::S3_ENDPOINT, self.https_endpoint()?.to_owned()),
            (env::S3_BUCKET, self.s3.bucket.clone()),
            (env::S3_PREFIX, prefix.to_owned()),
            (
                env::S3_ACCESS_KEY_ID_FILE,
                self.access_key_file.display().to_string(),
            ),
            (
                env::S3_SECRET_ACCESS_KEY_FILE,
                self.secret_key_file.display().to_string(),
            ),
            (env::S3_CA_FILE, self.tls.ca.display().to_string()),
            (env::WAL_COMPRESSION, compression.to_owned()),
            (env::WAL_SPOOL, spool.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect())
    }

    /// `program` as PostgreSQL's user, in `cwd`, with `vars` and nothing inherited that
    /// the tools read; killed with its group if dropped.
    pub fn command(
        &self,
        program: &Path,
        cwd: &Path,
        vars: &HashMap<String, String>,
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(program);
        cmd.current_dir(cwd)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .process_group(0);
        for var in cleared_vars() {
            cmd.env_remove(var);
        }
        cmd.envs(vars);
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// Run it to the end; an error with its stderr unless it succeeds.
    pub async fn run(
        &self,
        mut cmd: tokio::process::Command,
        what: &str,
    ) -> anyhow::Result<Output> {
        let out = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .with_context(|| format!("starting {what}"))?;
        if !out.status.success() {
            bail!(
                "{what}: {}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    /// `pg_bin/<program> args…` as PostgreSQL's user.
    pub async fn pg_tool(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        let mut cmd = self.command(&self.pg_bin.join(program), Path::new("/"), &HashMap::new());
        cmd.args(args);
        self.run(cmd, program).await
    }
}

/// `weed` with room for the bench's ~12 GB: the test server's 32 volumes of 64 MB
/// would fill up during the first phase (later flags win, so they are appended).
fn roomy_weed(dir: &Path, weed: &Path) -> anyhow::Result<PathBuf> {
    let wrapper = dir.join("weed");
    let quoted = weed.display().to_string().replace('\'', r"'\''");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec '{quoted}' \"$@\" -master.volumeSizeLimitMB=1024 -volume.max=64\n"
        ),
    )?;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    Ok(wrapper)
}

/// Bytes of the regular files under `path` (`skip` names a top-level entry left out).
pub fn tree_bytes(path: &Path, skip: Option<&str>) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(path).with_context(|| path.display().to_string())? {
        let entry = entry?;
        if skip.is_some_and(|s| entry.file_name() == s) {
            continue;
        }
        let meta = entry.metadata()?;
        if meta.is_dir() {
            total += tree_bytes(&entry.path(), None)?;
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// `bytes` over `elapsed` in MiB/s.
pub fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    mib(bytes) / elapsed.as_secs_f64().max(1e-9)
}

/// The first `program` on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The first line `program --version`-like `args` print (for the context).
pub fn version_of(program: &Path, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines().next().map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// As root, the `postgres` user's ids; otherwise `None` (run as oneself).
fn pg_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.first() != Some(&"postgres") || fields.len() < 4 {
            return None;
        }
        Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
    })
}

/// Keys and sizes of every object under `prefix`.
pub async fn list_sizes(s3: &S3Server, prefix: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = s3
            .client()
            .list_objects_v2()
            .bucket(&s3.bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| {
                anyhow!(
                    "listing {prefix}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(e)
                )
            })?;
        for object in page.contents() {
            let size = object.size().unwrap_or_default();
            out.push((
                object.key().unwrap_or_default().to_owned(),
                u64::try_from(size).unwrap_or_default(),
            ));
        }
        token = page.next_continuation_token().map(str::to_owned);
        if token.is_none() {
            return Ok(out);
        }
    }
}
