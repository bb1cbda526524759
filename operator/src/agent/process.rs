//! The PostgreSQL server, a child of the agent.

use std::path::Path;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};

use super::bootstrap::conf_arg;
use super::error::{AgentError, Result};
use super::settings::Settings;
use crate::names::{POSTGRES_PORT, REPLICATION_USER};

/// The running postmaster.
pub struct Postgres {
    pub child: tokio::process::Child,
    /// The last FATAL or PANIC line PostgreSQL wrote (its log goes through the agent to
    /// the container log).
    pub last_fatal: Arc<Mutex<Option<String>>>,
}

/// Copy PostgreSQL's log to the container log, keeping its last FATAL or PANIC line.
fn forward_log(stderr: tokio::process::ChildStderr, last_fatal: Arc<Mutex<Option<String>>>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("{line}");
            if line.contains("FATAL:") || line.contains("PANIC:") {
                if let Ok(mut last) = last_fatal.lock() {
                    *last = Some(line);
                }
            }
        }
    });
}

impl Postgres {
    /// Start the server on the data directory. Replicas stream through the read-write
    /// Service, so they follow every promotion without a configuration change.
    pub fn start(settings: &Settings, bin: &Path) -> Result<Self> {
        let conninfo = format!(
            "primary_conninfo=host={} port={POSTGRES_PORT} user={REPLICATION_USER} passfile={} application_name={} connect_timeout=5",
            settings.rw_host,
            settings.replication_passfile().display(),
            settings.instance
        );
        let child = tokio::process::Command::new(bin.join("postgres"))
            .arg("-D")
            .arg(&settings.pgdata)
            .arg("-c")
            .arg(conf_arg(settings))
            .arg("-c")
            .arg(conninfo)
            .arg("-c")
            .arg(format!("primary_slot_name={}", settings.slot))
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| AgentError::command("postgres", e))?;
        let mut child = child;
        let last_fatal = Arc::new(Mutex::new(None));
        if let Some(stderr) = child.stderr.take() {
            forward_log(stderr, last_fatal.clone());
        }
        Ok(Self { child, last_fatal })
    }

    fn signal(&self, signal: i32) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) with a pid we spawned and a valid signal number.
            unsafe { libc::kill(pid as i32, signal) };
        }
    }

    /// Reload (SIGHUP): PostgreSQL rereads its configuration files and applies what can
    /// change without a restart.
    pub fn reload(&self) {
        self.signal(libc::SIGHUP);
    }

    async fn stop(mut self, signal: i32) -> Result<ExitStatus> {
        self.signal(signal);
        self.child
            .wait()
            .await
            .map_err(|e| AgentError::command("postgres", e))
    }

    /// Fast shutdown (SIGINT): clients are disconnected, and replicas receive all WAL
    /// up to the shutdown checkpoint before the server exits.
    pub async fn stop_fast(self) -> Result<ExitStatus> {
        self.stop(libc::SIGINT).await
    }

    /// Immediate shutdown (SIGQUIT): used to fence, when waiting is not safe.
    pub async fn stop_immediate(self) -> Result<ExitStatus> {
        self.stop(libc::SIGQUIT).await
    }
}
