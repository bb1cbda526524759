//! pgBackRest against the same S3 server: one configuration file, one stanza (and repo
//! path) per measurement, so no run finds another's files.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::pg::Pg;
use super::Bench;
use crate::s3::{ACCESS_KEY, SECRET_KEY};

pub struct Stanza {
    pub name: String,
    pub pg_data: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub archive_async: bool,
}

pub struct PgBackRest {
    pub conf: PathBuf,
    dir: PathBuf,
    global: String,
    stanzas: Vec<Stanza>,
}

impl PgBackRest {
    /// Its fastest settings: lz4, two processes, asynchronous archiving where a stanza
    /// asks for it. TLS without verification (pgBackRest speaks only HTTPS to S3, and
    /// the test certificate names an IP address).
    pub fn new(bench: &Bench) -> anyhow::Result<Self> {
        let dir = bench.subdir("pgbackrest")?;
        let port = bench
            .https_endpoint()?
            .rsplit(':')
            .next()
            .context("an endpoint with a port")?
            .to_owned();
        let mut global = String::from("[global]\n");
        for (k, v) in [
            ("repo1-type", "s3"),
            ("repo1-s3-endpoint", "127.0.0.1"),
            ("repo1-storage-port", port.as_str()),
            ("repo1-s3-bucket", bench.s3.bucket.as_str()),
            ("repo1-s3-region", "us-east-1"),
            ("repo1-s3-uri-style", "path"),
            ("repo1-s3-key", ACCESS_KEY),
            ("repo1-s3-key-secret", SECRET_KEY),
            ("repo1-storage-verify-tls", "n"),
            ("repo1-retention-full", "10"),
            ("compress-type", "lz4"),
            ("process-max", "2"),
            ("start-fast", "y"),
            ("log-level-console", "warn"),
            ("log-level-stderr", "warn"),
            ("log-level-file", "info"),
        ] {
            let _ = writeln!(global, "{k}={v}");
        }
        for (k, sub) in [("log-path", "log"), ("lock-path", "lock")] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path)?;
            let _ = writeln!(global, "{k}={}", path.display());
        }
        bench.chown(&dir)?;
        let conf = dir.join("pgbackrest.conf");
        let this = Self {
            conf,
            dir,
            global,
            stanzas: Vec::new(),
        };
        this.write(bench)?;
        Ok(this)
    }

    fn write(&self, bench: &Bench) -> anyhow::Result<()> {
        let mut text = self.global.clone();
        for s in &self.stanzas {
            let _ = write!(
                text,
                "\n[{name}]\npg1-path={data}\npg1-socket-path={socket}\npg1-port={port}\n\
                 pg1-user=postgres\nrepo1-path=/pgbackrest/{name}\narchive-async={async_}\n\
                 spool-path={spool}\n",
                name = s.name,
                data = s.pg_data.display(),
                socket = s.socket_dir.display(),
                port = s.port,
                async_ = if s.archive_async { "y" } else { "n" },
                spool = self.dir.join(format!("spool-{}", s.name)).display(),
            );
        }
        std::fs::write(&self.conf, text)?;
        bench.chown(&self.conf)?;
        Ok(())
    }

    /// Add a stanza for the running server `pg` and create it in the repository.
    pub async fn stanza_create(
        &mut self,
        bench: &Bench,
        name: &str,
        pg: &Pg,
        archive_async: bool,
    ) -> anyhow::Result<()> {
        let spool = self.dir.join(format!("spool-{name}"));
        std::fs::create_dir_all(&spool)?;
        bench.chown(&spool)?;
        self.stanzas.push(Stanza {
            name: name.to_owned(),
            pg_data: pg.data.clone(),
            socket_dir: pg.socket_dir.clone(),
            port: pg.port,
            archive_async,
        });
        self.write(bench)?;
        self.run(bench, name, &["stanza-create"]).await?;
        Ok(())
    }

    /// Point `stanza` at another data directory of the same cluster (a copy of its
    /// `pg_control` is all `archive-push` reads there).
    pub fn set_pg_path(&mut self, bench: &Bench, stanza: &str, data: &Path) -> anyhow::Result<()> {
        let s = self
            .stanzas
            .iter_mut()
            .find(|s| s.name == stanza)
            .with_context(|| format!("no stanza {stanza}"))?;
        s.pg_data = data.to_path_buf();
        self.write(bench)
    }

    /// `pgbackrest --config=… --stanza=<stanza> <args…>` as PostgreSQL's user.
    pub fn command(&self, bench: &Bench, stanza: &str, args: &[&str]) -> tokio::process::Command {
        let mut cmd = bench.command(&bench.pgbackrest, Path::new("/"), &HashMap::new());
        cmd.arg(format!("--config={}", self.conf.display()))
            .arg(format!("--stanza={stanza}"))
            .args(args);
        cmd
    }

    pub async fn run(&self, bench: &Bench, stanza: &str, args: &[&str]) -> anyhow::Result<()> {
        let what = format!("pgbackrest {} ({stanza})", args.join(" "));
        bench.run(self.command(bench, stanza, args), &what).await?;
        Ok(())
    }

    /// The command line PostgreSQL would run for archiving to `stanza`.
    pub fn archive_command(&self, bench: &Bench, stanza: &str) -> String {
        format!(
            "{} --config={} --stanza={stanza} archive-push %p",
            bench.pgbackrest.display(),
            self.conf.display()
        )
    }

    /// The restore_command of a server restored into `data`.
    pub fn restore_command(&self, bench: &Bench, stanza: &str, data: &Path) -> String {
        format!(
            "{} --config={} --stanza={stanza} --pg1-path={} archive-get %f \"%p\"",
            bench.pgbackrest.display(),
            self.conf.display(),
            data.display()
        )
    }

    /// Wait for the asynchronous processes pgBackRest leaves behind (they hold a lock
    /// file each while they work) to finish; after `timeout`, SIGTERM the pid a lock
    /// file names.
    pub fn settle(&self, timeout: Duration) {
        let Ok(entries) = std::fs::read_dir(self.dir.join("lock")) else {
            return;
        };
        let deadline = Instant::now() + timeout;
        for entry in entries.flatten() {
            let path = entry.path();
            while is_locked(&path) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if is_locked(&path) {
                if let Some(pid) = lock_pid(&path) {
                    // SAFETY: kill(2) has no memory-safety preconditions.
                    unsafe {
                        libc::kill(pid, libc::SIGTERM);
                    }
                }
            }
        }
    }
}

impl Drop for PgBackRest {
    fn drop(&mut self) {
        self.settle(Duration::from_secs(30));
    }
}

/// Someone holds an flock on `path` (pgBackRest's locks are flocks).
fn is_locked(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    // SAFETY: flock on a descriptor this function owns.
    let got = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
    if got {
        // SAFETY: as above.
        unsafe {
            libc::flock(file.as_raw_fd(), libc::LOCK_UN);
        }
    }
    !got
}

/// The process id a lock file holds (its first number), if any.
fn lock_pid(path: &Path) -> Option<libc::pid_t> {
    let text = std::fs::read_to_string(path).ok()?;
    let digits: String = text
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().filter(|pid| *pid > 1)
}
