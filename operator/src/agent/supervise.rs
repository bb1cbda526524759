//! One run of PostgreSQL under the agent: follow the desired primary, fence when the
//! primary role cannot be confirmed, stop on the kubelet's signal.

use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use kube::Api;
use tracing::{info, warn};

use super::command::blocking;
use super::desired::{fetch, Desired};
use super::error::{AgentError, Result};
use super::lease::{LeaseState, PrimaryLease, Wanted};
use super::process::Postgres;
use super::reaper;
use super::settings::Settings;
use super::standby_floor::standby_overrides;
use super::stop::Stop;
use crate::api::GeoDatabase;
use crate::pod_contract::{
    CA_CERT, PG_HBA_CONF, PG_IDENT_CONF, POSTGRESQL_CONF, TLS_CERT, TLS_KEY, TLS_SUBDIR,
};

/// How often the agent reads the GeoDatabase while PostgreSQL runs.
pub const TICK: Duration = Duration::from_millis(250);

/// How one run of PostgreSQL ended.
pub enum Ended {
    /// SIGINT or SIGTERM from the kubelet: the container stops.
    Terminated(ExitStatus),
    /// Another instance is the primary now; this one stopped to rejoin.
    Demoted,
    /// A replica that received WAL the primary never had: rewound before it follows.
    Diverged,
    /// A replica that needs WAL the primary no longer keeps: copied afresh.
    FellBehind(String),
    /// Fenced: the primary Lease was not renewed in time (or another instance holds it).
    Fenced,
    /// Stopped to start again with other settings (see `standby_floor`).
    Restart,
    /// PostgreSQL exited on its own, with its last FATAL line, if any.
    Exited {
        was_primary: bool,
        fatal: Option<String>,
        /// It had started (accepted connections) before it exited.
        served: bool,
    },
}

/// PostgreSQL exited: kill and reap what the postmaster left behind.
async fn reap(
    settings: &Settings,
    status: std::io::Result<ExitStatus>,
    (fatal, served): (Option<String>, bool),
) -> Result<Ended> {
    let status = status.map_err(|e| AgentError::command("postgres", e))?;
    let was_primary = !settings.is_standby();
    warn!(%status, was_primary, "PostgreSQL exited");
    let left = blocking("reaping", || Ok(reaper::kill_and_reap_children())).await?;
    if left > 0 {
        warn!(
            processes = left,
            "killed the processes the postmaster left behind"
        );
    }
    Ok(Ended::Exited {
        was_primary,
        fatal,
        served,
    })
}

/// The mounted files PostgreSQL reads on reload: its configuration, and the server
/// certificate. The kubelet replaces them in place when the operator changes their
/// ConfigMap or Secret.
fn mounted_config(settings: &Settings) -> Vec<u8> {
    let config = [POSTGRESQL_CONF, PG_HBA_CONF, PG_IDENT_CONF].map(|f| settings.config_dir.join(f));
    let tls = [TLS_CERT, TLS_KEY, CA_CERT].map(|f| settings.secrets_dir.join(TLS_SUBDIR).join(f));
    config
        .iter()
        .chain(&tls)
        .flat_map(|path| std::fs::read(path).unwrap_or_default())
        .collect()
}

/// Whether a primary must fence itself now: its Lease is held by another instance, or
/// was last renewed (or, for a primary just promoted, it became one) longer ago than
/// `fence_after`.
pub fn must_fence(state: LeaseState, primary_since: Instant, fence_after: Duration) -> bool {
    let baseline = state
        .renewed_at
        .map_or(primary_since, |r| r.max(primary_since));
    state.held_by_other || baseline.elapsed() > fence_after
}

/// What the supervisor works with besides the server.
pub struct Watch<'a> {
    pub settings: &'a Settings,
    pub bin: &'a Path,
    pub api: Option<&'a Api<GeoDatabase>>,
    pub lease: Option<&'a PrimaryLease>,
}

/// Stop fast and give the Lease up (the server stops as a primary on purpose).
async fn stop_and_release(postgres: Postgres, lease: Option<&PrimaryLease>) -> Result<ExitStatus> {
    let status = postgres.stop_fast().await?;
    if let Some(lease) = lease {
        lease.want(Wanted::default());
        lease.release().await;
    }
    Ok(status)
}

/// How often a server that runs raised settings checks whether it still needs them.
const FLOOR_CHECK_EVERY: Duration = Duration::from_secs(10);
/// A server promoted with raised settings restarts in place this long after its
/// promotion (the former primary is rejoining meanwhile).
const PROMOTED_SETTLE: Duration = Duration::from_secs(30);

/// When a server started with raised settings (`Postgres::raised`) checks whether it
/// still needs them: a standby while its primary runs them, a primary never.
struct FloorCheck {
    active: bool,
    last: Instant,
    primary_since: Option<Instant>,
}

impl FloorCheck {
    fn new(postgres: &Postgres) -> Self {
        Self {
            active: !postgres.raised.is_empty(),
            last: Instant::now(),
            primary_since: None,
        }
    }

    fn due(&mut self, primary_now: bool) -> bool {
        if !self.active {
            return false;
        }
        if primary_now {
            let since = *self.primary_since.get_or_insert_with(Instant::now);
            return since.elapsed() >= PROMOTED_SETTLE;
        }
        if self.last.elapsed() < FLOOR_CHECK_EVERY {
            return false;
        }
        self.last = Instant::now();
        true
    }

    /// Whether the raised settings differ from what it needs now.
    async fn stale(&self, settings: &Settings, bin: &Path, postgres: &Postgres) -> Result<bool> {
        let (settings, bin) = (settings.clone(), bin.to_path_buf());
        let needed = blocking("reading the primary's recorded settings", move || {
            Ok(standby_overrides(&settings, &bin))
        })
        .await?;
        Ok(needed != postgres.raised)
    }
}

/// A replica whose log says it cannot follow its primary: how its run must end.
fn cannot_follow(postgres: &Postgres) -> Option<Ended> {
    let (diverged, wal_gone) = postgres
        .log
        .lock()
        .map(|mut l| (l.diverged.take(), l.wal_gone.take()))
        .unwrap_or_default();
    if let Some(line) = diverged {
        warn!(%line, "this replica's history forked from the primary's: stopping to rewind it");
        return Some(Ended::Diverged);
    }
    let line = wal_gone?;
    warn!(%line, "this replica needs WAL the primary no longer keeps: stopping to copy it afresh");
    Some(Ended::FellBehind(line))
}

/// Supervise one run of PostgreSQL until it ends.
pub async fn supervise(
    watch: Watch<'_>,
    mut postgres: Postgres,
    term: &mut Stop,
    mut desired: Desired,
) -> Result<Ended> {
    let Watch {
        settings,
        bin,
        api,
        lease,
    } = watch;
    let mut tick = tokio::time::interval(TICK);
    let mut config = mounted_config(settings);
    let mut primary_since: Option<Instant> = None;
    let mut roles_synced = false;
    let mut floor = FloorCheck::new(&postgres);
    loop {
        tokio::select! {
            // A stop from the kubelet comes before anything else.
            biased;
            _ = term.recv() => {
                info!("stop signal: fast shutdown of PostgreSQL");
                return stop_and_release(postgres, lease).await.map(Ended::Terminated);
            }
            status = postgres.child.wait() => {
                let facts = postgres
                    .log
                    .lock()
                    .map(|mut l| (l.last_fatal.take(), l.served))
                    .unwrap_or_default();
                return reap(settings, status, facts).await;
            }
            _ = tick.tick() => {}
        }
        let now = mounted_config(settings);
        if now != config {
            // Settings that need a restart roll the pod (the operator does that); the
            // others take effect now.
            info!("the configuration changed: reloading PostgreSQL");
            postgres.reload();
            config = now;
        }
        let primary_now = !settings.is_standby();
        if primary_now && !roles_synced {
            // Started as the primary or just promoted: the roles follow the Secrets
            // (the task ends when this instance is a standby again).
            tokio::spawn(super::roles::sync(settings.clone()));
        }
        roles_synced = primary_now;
        if !primary_now {
            if let Some(ended) = cannot_follow(&postgres) {
                postgres.stop_fast().await?;
                return Ok(ended);
            }
        }
        if floor.due(primary_now) && floor.stale(settings, bin, &postgres).await? {
            info!(running = ?postgres.raised, "restarting PostgreSQL in place to run its configured settings");
            postgres.stop_fast().await?;
            return Ok(Ended::Restart);
        }
        if let Some(now) = fetch(api, settings).await {
            desired = now;
            if primary_now && desired.primary != settings.instance {
                info!(new_primary = %desired.primary, "another instance is the primary: stopping to rejoin as a replica");
                stop_and_release(postgres, lease).await?;
                return Ok(Ended::Demoted);
            }
        }
        let Some(lease) = lease.filter(|_| primary_now) else {
            continue;
        };
        let since = *primary_since.get_or_insert_with(Instant::now);
        lease.want(Wanted {
            hold: true,
            take_over: desired.primary == settings.instance,
            duration: desired.lease_duration(),
        });
        if desired.instances > 1 && must_fence(lease.state(), since, desired.fence_after()) {
            warn!(
                held_by_other = lease.state().held_by_other,
                "the primary Lease is not renewed: fencing (immediate shutdown)"
            );
            lease.want(Wanted::default());
            postgres.stop_immediate().await?;
            return Ok(Ended::Fenced);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_primary_fences_when_its_lease_is_stale_or_taken() {
        let fence_after = Duration::from_millis(2500);
        let long_ago = Instant::now() - Duration::from_secs(10);
        let fresh = LeaseState {
            renewed_at: Some(Instant::now()),
            held_by_other: false,
        };
        assert!(!must_fence(fresh, long_ago, fence_after));
        let stale = LeaseState {
            renewed_at: Some(long_ago),
            held_by_other: false,
        };
        assert!(must_fence(stale, long_ago, fence_after));
        // Just promoted, not yet renewed: the promotion counts as the start.
        assert!(!must_fence(
            LeaseState::default(),
            Instant::now(),
            fence_after
        ));
        let taken = LeaseState {
            held_by_other: true,
            ..fresh
        };
        assert!(must_fence(taken, Instant::now(), fence_after));
    }
}
