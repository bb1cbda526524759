//! `geodb instance`: the agent that runs as PID 1 in every database pod. It prepares
//! the data directory (initdb on the bootstrap instance of a new cluster, a base backup
//! of the primary everywhere else), runs PostgreSQL as its child, follows the role the
//! GeoDatabase gives this instance, and turns the kubelet's stop into a fast shutdown.
//!
//! | module | what |
//! |---|---|
//! | `settings` | the pod's environment (`pod_contract`) |
//! | `desired` | the role the GeoDatabase asks for, and the next step |
//! | `bootstrap` | initdb, roles, database, extensions |
//! | `clone` | base backup of the primary; rejoin of a former primary |
//! | `process` | the PostgreSQL child |
//! | `supervise` | one run of PostgreSQL: follow, fence, stop |
//! | `reaper` | processes a dead postmaster leaves behind |

mod bootstrap;
mod clone;
mod command;
mod desired;
pub mod error;
mod files;
mod process;
pub mod reaper;
pub mod settings;
mod supervise;

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use kube::Api;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{info, warn};

use crate::api::GeoDatabase;
use crate::names::REPLICATION_USER;
use crate::pod_contract::Credential;
use bootstrap::{bootstrap_mode, initdb, Bootstrap};
use command::{bin_dir, blocking};
use desired::{fetch, kube_api, next_step, Desired, Next};
use error::{AgentError, Result};
use files::{restrict_data_directory, write_pgpass};
use process::Postgres;
pub use settings::Settings;
use supervise::{supervise, Ended, TICK};

/// What the agent waits on: the kubelet's stop, or `future`.
enum Waited<T> {
    Stopped,
    Done(T),
}

async fn unless_stopped<T>(
    term: &mut Signal,
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
    term: &mut Signal,
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
    term: &mut Signal,
) -> Result<bool> {
    let mode = bootstrap_mode(
        settings.has_data(),
        settings.instance == desired.primary && settings.instance == settings.bootstrap_instance,
        settings.bootstrapped(),
    );
    info!(instance = %settings.instance, ?mode, primary = %desired.primary, bin = %bin.display(), "preparing data directory");
    let (prepare, prepare_bin) = (settings.clone(), bin.to_owned());
    let preparing = blocking("prepare", move || match mode {
        Bootstrap::Existing => Ok(()),
        Bootstrap::Initdb => initdb(&prepare, &prepare_bin),
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

/// The agent's state across passes of the main loop.
struct Agent {
    settings: Settings,
    bin: std::path::PathBuf,
    api: Option<Api<GeoDatabase>>,
    desired: Desired,
    crashed_at: Option<Instant>,
}

impl Agent {
    /// Follow the GeoDatabase once: wait, rejoin, or run PostgreSQL until it ends.
    async fn pass(&mut self, term: &mut Signal) -> Result<Pass> {
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
            self.crashed_at.map(|t| t.elapsed()),
        );
        match step {
            Next::Wait => {
                return Ok(match unless_stopped(term, tokio::time::sleep(TICK)).await {
                    Waited::Stopped => Pass::Stop(ExitStatus::default()),
                    Waited::Done(()) => Pass::Again,
                })
            }
            Next::Rejoin => {
                info!(primary = %self.desired.primary, "rejoining as a replica");
                let (s, b) = (self.settings.clone(), self.bin.clone());
                let rejoining = blocking("rejoin", move || clone::rejoin(&s, &b));
                if let Waited::Stopped = unless_stopped(term, rejoining).await {
                    return Ok(Pass::Stop(ExitStatus::default()));
                }
            }
            Next::Start => {}
        }
        self.run_postgres(term).await
    }

    async fn run_postgres(&mut self, term: &mut Signal) -> Result<Pass> {
        self.crashed_at = None;
        restrict_data_directory(&self.settings)?;
        info!(standby = self.settings.is_standby(), primary = %self.desired.primary, "starting PostgreSQL");
        let started = Instant::now();
        let postgres = Postgres::start(&self.settings, &self.bin)?;
        let ended = supervise(
            &self.settings,
            self.api.as_ref(),
            postgres,
            term,
            self.desired.clone(),
        )
        .await?;
        match ended {
            Ended::Terminated(status) => return Ok(Pass::Stop(status)),
            Ended::Demoted | Ended::Fenced => {}
            Ended::Exited { was_primary } => {
                if was_primary {
                    self.crashed_at = Some(Instant::now());
                }
                // A server that cannot start is not restarted in a tight loop.
                if started.elapsed() < Duration::from_secs(1) {
                    if let Waited::Stopped =
                        unless_stopped(term, tokio::time::sleep(Duration::from_secs(1))).await
                    {
                        return Ok(Pass::Stop(ExitStatus::default()));
                    }
                }
                if self.api.is_none() {
                    return Err(AgentError::command("postgres", "exited"));
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
    let mut term = signal(SignalKind::terminate()).map_err(|e| AgentError::command("signal", e))?;
    if let Err(error) = reaper::become_subreaper() {
        warn!(%error, "cannot become a child subreaper: processes a crashed server leaves may outlive it");
    }
    let api = kube_api(&settings).await;
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
        desired,
        crashed_at: None,
    };
    loop {
        if let Pass::Stop(status) = agent.pass(&mut term).await? {
            return Ok(status);
        }
    }
}
