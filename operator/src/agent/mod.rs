//! `geodb instance`: the agent that runs as PID 1 in every database pod. It prepares
//! the data directory (initdb or a restore of backups on the bootstrap instance of a new
//! cluster, a base backup of the primary everywhere else), runs PostgreSQL as its child,
//! follows the role the GeoDatabase gives this instance, and turns the kubelet's stop
//! into a fast shutdown.
//!
//! | module | what |
//! |---|---|
//! | `settings` | the pod's environment (`pod_contract`) |
//! | `desired` | the role the GeoDatabase asks for, and the next step |
//! | `bootstrap` | initdb, roles, database, extensions |
//! | `recover` | a new cluster from another's backups: restore, replay, promote |
//! | `clone` | base backup of the primary; rejoin of a former primary |
//! | `process` | the PostgreSQL child |
//! | `supervise` | one run of PostgreSQL: follow, fence, stop |
//! | `reaper` | processes a dead postmaster leaves behind |

mod bootstrap;
mod clone;
mod command;
mod desired;
pub mod error;
pub mod exporter;
mod files;
mod http;
mod lease;
mod process;
pub mod reaper;
mod recover;
mod report;
mod roles;
mod scram;
pub mod settings;
mod standby_floor;
mod stop;
mod supervise;

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use kube::Api;
use tracing::{info, warn};

use crate::api::GeoDatabase;
use crate::names::REPLICATION_USER;
use crate::pod_contract::{Credential, INSTANCE_PARKED, PARKED_RETELL, REFUSED_PREFIX};
use bootstrap::{bootstrap_mode, initdb, Bootstrap};
use command::{bin_dir, blocking};
use desired::{fetch, kube_api, next_step, Desired, Next};
use error::{AgentError, Result};
use files::{restrict_data_directory, write_pgpass};
use lease::{PrimaryLease, Wanted};
use process::Postgres;
use report::Events;
pub use settings::Settings;
use stop::Stop;
use supervise::{supervise, Ended, Watch, TICK};

/// What the agent waits on: the kubelet's stop, or `future`.
enum Waited<T> {
    Stopped,
    Done(T),
}

async fn unless_stopped<T>(
    term: &mut Stop,
    future: impl std::future::Future<Output = T>,
) -> Waited<T> {
    tokio::select! {
        biased;
        _ = term.recv() => Waited::Stopped,
        value = future => Waited::Done(value),
    }
}

/// Nothing starts before the GeoDatabase says who the primary is.
async fn first_desired(
    api: Option<&Api<GeoDatabase>>,
    settings: &Settings,
    term: &mut Stop,
) -> Option<Desired> {
    if api.is_none() {
        return Some(Desired::alone(settings));
    }
    loop {
        if let Some(desired) = fetch(api, settings).await {
            return Some(desired);
        }
        if let Waited::Stopped =
            unless_stopped(term, tokio::time::sleep(Duration::from_secs(1))).await
        {
            return None;
        }
    }
}

/// Fill an empty data directory (initdb or a clone); `false` when stopped meanwhile.
async fn prepare(
    settings: &Settings,
    bin: &std::path::Path,
    desired: &Desired,
    term: &mut Stop,
) -> Result<bool> {
    let mode = bootstrap_mode(
        settings.has_data(),
        settings.instance == desired.primary && settings.instance == settings.bootstrap_instance,
        settings.bootstrapped(),
        settings.recovery_target.is_some(),
    );
    info!(instance = %settings.instance, ?mode, primary = %desired.primary, bin = %bin.display(), "preparing data directory");
    let (prepare, prepare_bin) = (settings.clone(), bin.to_owned());
    let preparing = blocking("prepare", move || match mode {
        Bootstrap::Existing => Ok(()),
        Bootstrap::Initdb => initdb(&prepare, &prepare_bin),
        Bootstrap::Recover => {
            let target = prepare.recovery_target.clone().unwrap_or_default();
            recover::recover(&prepare, &prepare_bin, &target)
        }
        Bootstrap::Clone => clone::clone_primary(&prepare, &prepare_bin),
    });
    match unless_stopped(term, preparing).await {
        Waited::Stopped => return Ok(false),
        Waited::Done(prepared) => prepared?,
    }
    write_pgpass(
        &settings.replication_passfile(),
        REPLICATION_USER,
        &settings.password(Credential::Replication)?,
    )?;
    Ok(true)
}

/// Where one pass of the main loop leaves the agent.
enum Pass {
    /// The container stops with this status.
    Stop(ExitStatus),
    /// Look again (after a wait, a rejoin or a run of PostgreSQL).
    Again,
}

use crate::pod_contract::TERMINATION_LOG;

/// Restarts of a PostgreSQL that keeps exiting before it accepts connections wait longer
/// each time (1 s, 2 s, 4 s, ... 30 s); a server that had started (a crash, a kill)
/// restarts at once, however short its run: every second there counts against the
/// failover delay.
#[derive(Debug, Default)]
struct RestartBackoff {
    quick_exits: u32,
}

impl RestartBackoff {
    const MAX: Duration = Duration::from_secs(30);

    /// How long to wait before the next start, after a run that `served` or not.
    fn after_exit(&mut self, served: bool) -> Duration {
        if served {
            self.quick_exits = 0;
            return Duration::ZERO;
        }
        self.quick_exits = self.quick_exits.saturating_add(1);
        Duration::from_secs(1u64 << (self.quick_exits - 1).min(5)).min(Self::MAX)
    }
}

/// The agent's state across passes of the main loop.
struct Agent {
    settings: Settings,
    bin: std::path::PathBuf,
    api: Option<Api<GeoDatabase>>,
    events: Option<Events>,
    lease: Option<PrimaryLease>,
    desired: Desired,
    backoff: RestartBackoff,
}

impl Agent {
    /// Follow the GeoDatabase once: rejoin if needed, then run PostgreSQL until it ends.
    async fn pass(&mut self, term: &mut Stop) -> Result<Pass> {
        if let Some(now) = fetch(self.api.as_ref(), &self.settings).await {
            self.desired = now;
        } else if self.api.is_some() {
            // Without the API this instance cannot know its role: wait for it.
            return Ok(match unless_stopped(term, tokio::time::sleep(TICK)).await {
                Waited::Stopped => Pass::Stop(ExitStatus::default()),
                Waited::Done(()) => Pass::Again,
            });
        }
        let step = next_step(
            &self.settings.instance,
            &self.desired,
            self.settings.is_standby(),
        );
        if step == Next::Rejoin {
            // Another instance is the primary now: this one gives up its claim first.
            if let Some(lease) = &self.lease {
                lease.want(Wanted::default());
                lease.release().await;
            }
            if let Some(stop) = self.rejoin(term).await? {
                return Ok(stop);
            }
        }
        self.run_postgres(term).await
    }

    /// Rewind (or set aside and clone) a former primary; `Some` when the agent stops.
    async fn rejoin(&mut self, term: &mut Stop) -> Result<Option<Pass>> {
        info!(primary = %self.desired.primary, "rejoining as a replica");
        let (s, b) = (self.settings.clone(), self.bin.clone());
        let rejoining = blocking("rejoin", move || clone::rejoin(&s, &b));
        self.copied(term, rejoining, "pg_rewind failed").await
    }

    /// A replica that fell behind the primary's WAL retention: copied afresh.
    async fn reclone(&mut self, term: &mut Stop, why: String) -> Result<Option<Pass>> {
        let (s, b) = (self.settings.clone(), self.bin.clone());
        let recloning = blocking("reclone", move || clone::reclone(&s, &b, &why));
        self.copied(term, recloning, "it needs WAL the primary no longer keeps")
            .await
    }

    /// The outcome of a rewind or a fresh copy: told as an Event when data was set aside,
    /// parked when it could not be; `Some` when the agent stops.
    async fn copied(
        &mut self,
        term: &mut Stop,
        copying: impl std::future::Future<Output = Result<clone::Rejoined>>,
        what: &str,
    ) -> Result<Option<Pass>> {
        let rejoined = match unless_stopped(term, copying).await {
            Waited::Stopped => return Ok(Some(Pass::Stop(ExitStatus::default()))),
            Waited::Done(rejoined) => rejoined,
        };
        let instance = &self.settings.instance;
        match rejoined {
            Ok(clone::Rejoined::Rewound) => Ok(None),
            Ok(clone::Rejoined::KeptAndCloned { kept, why }) => {
                self.warn("DataDirectoryKept", format!(
                    "{instance}: {what} ({why}); the data directory was kept as {kept} on its volume and a fresh copy of the primary taken (see docs/runbooks/kept-data.md)"
                )).await;
                Ok(None)
            }
            Err(AgentError::Parked(why)) => {
                warn!(%why, "parked: waiting for a human");
                let note = format!("{instance} waits: {why} (see docs/runbooks/kept-data.md)");
                self.park(term, note).await
            }
            Err(error) => Err(error),
        }
    }

    /// Wait until the kept data directories are gone (a human removed them), then look
    /// again; `Some` when the agent stops meanwhile. The container keeps running (a human
    /// can exec into it); the Event is published again while it waits, which the
    /// operator reports as Degraded (InstanceParked).
    async fn park(&mut self, term: &mut Stop, note: String) -> Result<Option<Pass>> {
        let mut told: Option<Instant> = None;
        while !clone::kept_directories(&self.settings).is_empty() {
            if told.is_none_or(|t| t.elapsed() >= PARKED_RETELL) {
                self.warn(INSTANCE_PARKED, note.clone()).await;
                told = Some(Instant::now());
            }
            if let Waited::Stopped =
                unless_stopped(term, tokio::time::sleep(Duration::from_secs(5))).await
            {
                return Ok(Some(Pass::Stop(ExitStatus::default())));
            }
        }
        Ok(Some(Pass::Again))
    }

    async fn warn(&self, reason: &str, note: String) {
        if let Some(events) = &self.events {
            events.warn(reason, note).await;
        }
    }

    /// A primary of a cluster with replicas holds the Lease before it takes writes: wait
    /// for it (another instance holds it, or the API server does not answer). `false`
    /// when the agent stops meanwhile.
    async fn hold_lease(&self, term: &mut Stop) -> bool {
        let Some(lease) = self.lease.as_ref().filter(|_| !self.settings.is_standby()) else {
            return true;
        };
        let wanted = Wanted {
            hold: true,
            take_over: self.desired.primary == self.settings.instance,
            duration: self.desired.lease_duration(),
        };
        loop {
            if lease.acquire_now(wanted).await || self.desired.instances <= 1 {
                return true;
            }
            warn!("waiting for the primary Lease before taking writes");
            if let Waited::Stopped = unless_stopped(term, tokio::time::sleep(TICK)).await {
                return false;
            }
        }
    }

    async fn run_postgres(&mut self, term: &mut Stop) -> Result<Pass> {
        if !self.hold_lease(term).await {
            return Ok(Pass::Stop(ExitStatus::default()));
        }
        restrict_data_directory(&self.settings)?;
        info!(standby = self.settings.is_standby(), primary = %self.desired.primary, "starting PostgreSQL");
        let (settings, bin) = (self.settings.clone(), self.bin.clone());
        let overrides = blocking("reading the primary's recorded settings", move || {
            Ok(standby_floor::standby_overrides(&settings, &bin))
        })
        .await?;
        if !overrides.is_empty() {
            info!(
                ?overrides,
                "starting at the primary's recorded values until it runs the lower ones"
            );
        }
        let postgres = Postgres::start(&self.settings, &self.bin, &overrides)?;
        let watch = Watch {
            settings: &self.settings,
            bin: &self.bin,
            api: self.api.as_ref(),
            lease: self.lease.as_ref(),
        };
        let ended = supervise(watch, postgres, term, self.desired.clone()).await?;
        match ended {
            Ended::Terminated(status) => return Ok(Pass::Stop(status)),
            Ended::Demoted | Ended::Fenced | Ended::Restart => {}
            Ended::FellBehind(why) => {
                if let Some(stop) = self.reclone(term, why).await? {
                    return Ok(stop);
                }
            }
            Ended::Diverged => {
                // Rewind it like a former primary: drop the recovery signal so the next
                // pass sees a data directory that must rejoin.
                let signal = self.settings.pgdata.join("standby.signal");
                std::fs::remove_file(&signal).map_err(AgentError::io(&signal))?;
            }
            Ended::Exited {
                was_primary,
                fatal,
                served,
            } => {
                if self.api.is_none() {
                    return Err(AgentError::command("postgres", "exited"));
                }
                if let Some(fatal) = fatal.filter(|_| !served) {
                    // It refused to start (a setting, a file): the container ends with
                    // PostgreSQL's own line as its termination message, which the
                    // operator reports; the kubelet restarts it with a growing delay.
                    let message = format!("{REFUSED_PREFIX}{fatal}");
                    let _ = std::fs::write(TERMINATION_LOG, &message);
                    return Err(AgentError::command("postgres", message));
                }
                // Restarted in place: a crashed primary runs crash recovery, which loses
                // no committed transaction; a failover happens only if this takes longer
                // than the failover delay.
                let wait = self.backoff.after_exit(served);
                info!(
                    was_primary,
                    wait_ms = wait.as_millis() as u64,
                    "restarting PostgreSQL in place"
                );
                if let Waited::Stopped = unless_stopped(term, tokio::time::sleep(wait)).await {
                    return Ok(Pass::Stop(ExitStatus::default()));
                }
            }
        }
        Ok(Pass::Again)
    }
}

/// Prepare the data directory, then run PostgreSQL in the role the GeoDatabase gives
/// this instance, until the kubelet stops the container.
pub async fn run(settings: Settings) -> Result<ExitStatus> {
    let bin = bin_dir()?;
    let mut term = Stop::new()?;
    http::serve(&settings, bin.clone());
    if let Err(error) = reaper::become_subreaper() {
        warn!(%error, "cannot become a child subreaper: processes a crashed server leaves may outlive it");
    }
    let client = kube::Client::try_default().await.ok();
    let api = client.as_ref().map(|c| kube_api(c.clone(), &settings));
    let events = client.as_ref().map(|c| Events::new(c.clone(), &settings));
    let lease = client.map(|c| PrimaryLease::new(c, &settings));
    if let Some(lease) = &lease {
        lease.spawn_keeper();
    }
    if api.is_none() {
        warn!("no Kubernetes API access: running in the role the data directory has");
    }
    let Some(desired) = first_desired(api.as_ref(), &settings, &mut term).await else {
        return Ok(ExitStatus::default());
    };
    if !prepare(&settings, &bin, &desired, &mut term).await? {
        return Ok(ExitStatus::default());
    }
    let mut agent = Agent {
        settings,
        bin,
        api,
        events,
        lease,
        desired,
        backoff: RestartBackoff::default(),
    };
    loop {
        if let Pass::Stop(status) = agent.pass(&mut term).await? {
            return Ok(status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_that_served_restarts_at_once_one_that_cannot_start_backs_off() {
        let mut backoff = RestartBackoff::default();
        assert_eq!(backoff.after_exit(true), Duration::ZERO);
        let waits: Vec<u64> = (0..8)
            .map(|_| backoff.after_exit(false).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        // Killed right after it started again, several times: never a wait.
        assert_eq!(backoff.after_exit(true), Duration::ZERO);
        assert_eq!(backoff.after_exit(true), Duration::ZERO);
        assert_eq!(backoff.after_exit(false), Duration::from_secs(1));
    }
}
