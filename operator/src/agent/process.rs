//! The PostgreSQL server, a child of the agent.

use std::path::Path;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};

use super::bootstrap::conf_arg;
use super::command::blocking;
use super::error::{AgentError, Result};
use super::reaper;
use super::settings::Settings;
use crate::names::{POSTGRES_PORT, REPLICATION_USER};
use crate::pod_contract::libpq_tls;

/// The running postmaster.
pub struct Postgres {
    pub child: tokio::process::Child,
    /// What its log told (it goes through the agent to the container log).
    pub log: Arc<Mutex<LogFacts>>,
    /// The settings it runs above its configuration (`name=value`), as a standby below
    /// a primary that runs them higher.
    pub raised: Vec<String>,
}

/// What the agent learns from PostgreSQL's log.
#[derive(Clone, Debug, Default)]
pub struct LogFacts {
    /// The last FATAL or PANIC line.
    pub last_fatal: Option<String>,
    /// A replica whose history forked from the primary's (it received WAL the new
    /// primary never had): it cannot follow without a rewind.
    pub diverged: Option<String>,
    /// A replica that needs WAL the primary no longer has (it was down past the WAL
    /// retention): only a fresh copy lets it follow again.
    pub wal_gone: Option<String>,
    /// The server said it accepts connections: it started, whatever ends it later.
    pub served: bool,
}

impl LogFacts {
    /// Take in one line of PostgreSQL's log.
    pub fn read(&mut self, line: &str) {
        if line.contains("FATAL:") || line.contains("PANIC:") {
            self.last_fatal = Some(line.to_owned());
        }
        if line.contains("forked off current database system timeline")
            || line.contains("is not a child of this server's history")
        {
            self.diverged = Some(line.to_owned());
        }
        if line.contains("database system is ready to accept") {
            self.served = true;
        }
        if line.contains("requested WAL segment") && line.contains("has already been removed") {
            self.wal_gone = Some(line.to_owned());
        }
    }
}

/// Copy PostgreSQL's log to the container log, keeping what the agent acts on.
fn forward_log(stderr: tokio::process::ChildStderr, facts: Arc<Mutex<LogFacts>>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("{line}");
            if let Ok(mut facts) = facts.lock() {
                facts.read(&line);
            }
        }
    });
}

/// The settings (`name=value`) the server always starts with: its configuration file,
/// and where a replica streams from.
pub fn server_settings(settings: &Settings) -> [String; 3] {
    [
        conf_arg(settings),
        format!(
            "primary_conninfo=host={} port={POSTGRES_PORT} user={REPLICATION_USER} passfile={} application_name={} connect_timeout=5 {}",
            settings.rw_host,
            settings.replication_passfile().display(),
            settings.instance,
            libpq_tls(),
        ),
        format!("primary_slot_name={}", settings.slot),
    ]
}

impl Postgres {
    /// Start the server on the data directory, `overrides` (`name=value`) on its command
    /// line. Replicas stream through the read-write Service, so they follow every
    /// promotion without a configuration change.
    pub fn start(settings: &Settings, bin: &Path, overrides: &[String]) -> Result<Self> {
        let child = tokio::process::Command::new(bin.join("postgres"))
            .arg("-D")
            .arg(&settings.pgdata)
            .args(
                server_settings(settings)
                    .iter()
                    .chain(overrides)
                    .flat_map(|o| ["-c", o.as_str()]),
            )
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| AgentError::command("postgres", e))?;
        let mut child = child;
        let log = Arc::new(Mutex::new(LogFacts::default()));
        if let Some(stderr) = child.stderr.take() {
            forward_log(stderr, log.clone());
        }
        Ok(Self {
            child,
            log,
            raised: overrides.to_vec(),
        })
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

    /// Signal the server, wait for it, then kill and reap whatever of it is left (children
    /// of the agent since the postmaster went: they would linger as zombies).
    async fn stop(mut self, signal: i32) -> Result<ExitStatus> {
        self.signal(signal);
        let status = self
            .child
            .wait()
            .await
            .map_err(|e| AgentError::command("postgres", e))?;
        blocking("reaping", || Ok(reaper::kill_and_reap_children())).await?;
        Ok(status)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_tells_a_refused_start_and_a_forked_history() {
        let mut facts = LogFacts::default();
        facts.read("2026-12-01 10:00:00 UTC [7] LOG:  database system is ready");
        assert!(facts.last_fatal.is_none() && facts.diverged.is_none());
        facts.read("2026-12-01 10:00:00 UTC [7] FATAL:  invalid value for parameter");
        assert!(facts.last_fatal.is_some());
        facts.read("LOG:  new timeline 3 forked off current database system timeline 2 before current recovery point 0/5000060");
        assert!(facts.diverged.is_some());
        facts.read("FATAL:  could not receive data from WAL stream: ERROR:  requested WAL segment 000000010000000000000003 has already been removed");
        assert!(facts.wal_gone.is_some());
    }

    /// A setting the agent puts on PostgreSQL's command line wins over the configuration
    /// file: a user who could set it too would be silently overridden, so it is reserved.
    /// (The standby floor raises user settings on purpose; it is not checked here.)
    #[test]
    fn every_setting_the_agent_passes_is_reserved() {
        use crate::api::{is_reserved, RecoveryTarget};
        let settings = crate::agent::settings::fixture();
        let mut names: Vec<String> = server_settings(&settings)
            .iter()
            .filter_map(|s| Some(s.split_once('=')?.0.to_owned()))
            .collect();
        let mut options = vec![super::super::bootstrap::socket_only_options(&settings)];
        for target in [
            "latest",
            "time:2026-12-01T10:00:00Z",
            "lsn:0/5000060",
            "name:n",
        ] {
            let target = RecoveryTarget::decode(target).unwrap();
            options.push(super::super::recover::replay_options(&settings, &target));
        }
        for line in &options {
            names.extend(
                line.split("-c ")
                    .skip(1)
                    .filter_map(|o| Some(o.split_once('=')?.0.to_owned())),
            );
        }
        assert!(names.len() > 10, "{names:?}");
        for name in names {
            assert!(
                is_reserved(&name),
                "the agent passes {name}, which spec.postgresql.parameters may set: reserve it in api/postgresql.rs"
            );
        }
    }
}
