//! A PostgreSQL 15 server of the bench: started as PostgreSQL's user on a Unix socket and
//! 127.0.0.1, stopped (fast shutdown) on drop or killed with SIGKILL on request.

use std::collections::HashMap;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::Bench;

use crate::s3;

pub struct Pg {
    child: Option<Child>,
    pub data: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub log: PathBuf,
}

/// Settings of every server here: loopback only, no fsync (the bench measures the
/// tools, not the disk), frequent checkpoints off.
fn common_settings(socket_dir: &Path, port: u16) -> Vec<String> {
    vec![
        format!("port={port}"),
        "listen_addresses=127.0.0.1".into(),
        format!("unix_socket_directories={}", socket_dir.display()),
        "fsync=off".into(),
        "wal_level=replica".into(),
        "max_wal_senders=5".into(),
        "shared_buffers=256MB".into(),
        "max_wal_size=1GB".into(),
        "log_min_messages=warning".into(),
        "log_checkpoints=off".into(),
    ]
}

impl Pg {
    /// `initdb` (trust authentication; the superuser gets a password too, for tools that
    /// insist on one).
    pub async fn initdb(bench: &Bench, data: &Path) -> anyhow::Result<()> {
        if let Some(parent) = data.parent() {
            std::fs::create_dir_all(parent)?;
            bench.chown(parent)?;
        }
        let data = data.display().to_string();
        bench
            .pg_tool(
                "initdb",
                &[
                    "-D",
                    &data,
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ],
            )
            .await?;
        Ok(())
    }

    /// Start a server on `data` with `settings` after the common ones and `vars` in its
    /// environment (what its archive and restore commands see); working directory `data`
    /// as PostgreSQL's own is.
    pub fn start(
        bench: &Bench,
        data: &Path,
        settings: &[String],
        vars: &HashMap<String, String>,
    ) -> anyhow::Result<Pg> {
        let socket_dir = data
            .parent()
            .context("a data directory has a parent")?
            .to_path_buf();
        let [port] = s3::free_ports()?;
        let log = data.with_extension("log");
        let out = std::fs::File::create(&log)?;
        bench.chown(&log)?;
        let mut cmd = Command::new(bench.pg_bin.join("postgres"));
        cmd.arg("-D")
            .arg(data)
            .current_dir(data)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        for setting in common_settings(&socket_dir, port).iter().chain(settings) {
            cmd.arg("-c").arg(setting);
        }
        for var in super::cleared_vars() {
            cmd.env_remove(var);
        }
        cmd.envs(vars);
        if let Some((uid, gid)) = bench.user {
            cmd.uid(uid).gid(gid);
        }
        let child = s3::spawn_owned(cmd).context("starting postgres")?;
        Ok(Pg {
            child: Some(child),
            data: data.to_path_buf(),
            socket_dir,
            port,
            log,
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A connection to `postgres` once the server accepts one (within `timeout`).
    pub async fn connect_within(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<tokio_postgres::Client> {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.socket_dir)
            .port(self.port)
            .user("postgres")
            .dbname("postgres");
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok((client, conn)) = config.connect(tokio_postgres::NoTls).await {
                tokio::spawn(conn);
                if client.simple_query("SELECT 1").await.is_ok() {
                    return Ok(client);
                }
            }
            self.bail_if_exited("starting")?;
            if Instant::now() > deadline {
                bail!(
                    "PostgreSQL on port {} not ready after {timeout:?}:\n{}",
                    self.port,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn connect(&mut self) -> anyhow::Result<tokio_postgres::Client> {
        self.connect_within(Duration::from_secs(120)).await
    }

    /// Wait until recovery has ended (the server was promoted at the end of the archive).
    pub async fn wait_out_of_recovery(
        &mut self,
        client: &tokio_postgres::Client,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(row) = client.query_one("SELECT pg_is_in_recovery()", &[]).await {
                if !row.get::<_, bool>(0) {
                    return Ok(());
                }
            }
            self.bail_if_exited("recovering")?;
            if Instant::now() > deadline {
                bail!("still in recovery after {timeout:?}:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An error with the log if the server has exited.
    fn bail_if_exited(&mut self, doing: &str) -> anyhow::Result<()> {
        let exited = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            bail!(
                "PostgreSQL on port {} exited while {doing} ({status}):\n{}",
                self.port,
                self.log_text()
            );
        }
        Ok(())
    }

    /// Fast shutdown, waited for (a SIGKILL after a minute).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            s3::signal_group(&child, libc::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            s3::stop(child, Duration::ZERO);
        }
    }

    /// SIGKILL to the postmaster and every process of its group (as a lost node).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            s3::signal_group(&child, libc::SIGKILL);
            let _ = child.wait();
        }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One `i64` from `sql`.
pub async fn query_i64(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<i64> {
    let row = client
        .query_one(sql, &[])
        .await
        .with_context(|| sql.to_owned())?;
    Ok(row.try_get(0)?)
}

/// The password of the role `postgres` in the loaded cluster.
pub const PASSWORD: &str = "bench-backup-password";

/// `geodb backup`'s environment for the server `pg` and a prefix.
pub fn backup_vars(
    bench: &Bench,
    pg: &Pg,
    prefix: &str,
    spool: &Path,
) -> anyhow::Result<HashMap<String, String>> {
    use geodb::pod_contract::env;
    let password = bench.dir.path().join("secrets").join("backup-password");
    std::fs::write(&password, format!("{PASSWORD}\n"))?;
    bench.chown(&password)?;
    let mut vars = bench.geodb_vars(prefix, spool, "zstd")?;
    for (k, v) in [
        (env::BACKUP_HOST, "127.0.0.1".to_owned()),
        (env::BACKUP_PORT, pg.port.to_string()),
        (env::BACKUP_USER, "postgres".to_owned()),
        (env::BACKUP_PASSWORD_FILE, password.display().to_string()),
        // A stuck archive fails the backup in minutes, not hours.
        (env::BACKUP_WAL_WAIT_SECONDS, "180".to_owned()),
        // Named, not searched: PATH may hold a partial set (a lone pg_ctl link).
        (
            geodb::backup::config::PG_BIN,
            bench.pg_bin.display().to_string(),
        ),
    ] {
        vars.insert(k.to_owned(), v);
    }
    Ok(vars)
}
