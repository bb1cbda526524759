//! The PostgreSQL server, a child of the agent.

use std::path::Path;
use std::process::ExitStatus;

use super::bootstrap::conf_arg;
use super::error::{AgentError, Result};
use super::settings::Settings;
use crate::names::{POSTGRES_PORT, REPLICATION_USER};

/// The running postmaster.
pub struct Postgres {
    pub child: tokio::process::Child,
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
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| AgentError::command("postgres", e))?;
        Ok(Self { child })
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
