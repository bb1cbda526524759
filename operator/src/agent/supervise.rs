//! One run of PostgreSQL under the agent: follow the desired primary, fence when the
//! primary role cannot be confirmed, stop on the kubelet's signal.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use kube::Api;
use tracing::{info, warn};

use super::command::blocking;
use super::desired::{fetch, Desired, API_TIMEOUT};
use super::error::{AgentError, Result};
use super::process::Postgres;
use super::reaper;
use super::settings::Settings;
use super::stop::Stop;
use crate::api::GeoDatabase;
use crate::pod_contract::{PG_HBA_CONF, PG_IDENT_CONF, POSTGRESQL_CONF};
use crate::postgres::connect_socket;

/// How often the agent reads the GeoDatabase while PostgreSQL runs.
pub const TICK: Duration = Duration::from_millis(500);

/// How one run of PostgreSQL ended.
pub enum Ended {
    /// SIGINT or SIGTERM from the kubelet: the container stops.
    Terminated(ExitStatus),
    /// Another instance is the primary now; this one stopped to rejoin.
    Demoted,
    /// Fenced: no confirmation of the primary role for too long.
    Fenced,
    /// PostgreSQL exited on its own, with its last FATAL line, if any.
    Exited {
        was_primary: bool,
        fatal: Option<String>,
    },
}

/// Some replica reported to this primary within `within`.
async fn replica_replied(settings: &Settings, within: Duration) -> bool {
    let query = async {
        let client = connect_socket(&settings.socket_dir).await.ok()?;
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_stat_replication \
                 WHERE reply_time > now() - make_interval(secs => $1)",
                &[&within.as_secs_f64()],
            )
            .await
            .ok()?;
        Some(row.get::<_, i64>(0))
    };
    matches!(tokio::time::timeout(API_TIMEOUT, query).await, Ok(Some(n)) if n > 0)
}

/// PostgreSQL exited: kill and reap what the postmaster left behind.
async fn reap(
    settings: &Settings,
    status: std::io::Result<ExitStatus>,
    fatal: Option<String>,
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
    Ok(Ended::Exited { was_primary, fatal })
}

/// The content of the mounted configuration files; the kubelet replaces them (within a
/// minute or so) when the operator changes the ConfigMap.
fn mounted_config(settings: &Settings) -> Vec<u8> {
    [POSTGRESQL_CONF, PG_HBA_CONF, PG_IDENT_CONF]
        .iter()
        .flat_map(|file| std::fs::read(settings.config_dir.join(file)).unwrap_or_default())
        .collect()
}

/// Supervise one run of PostgreSQL until it ends.
pub async fn supervise(
    settings: &Settings,
    api: Option<&Api<GeoDatabase>>,
    mut postgres: Postgres,
    term: &mut Stop,
    mut desired: Desired,
) -> Result<Ended> {
    let mut confirmed = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    let mut config = mounted_config(settings);
    loop {
        tokio::select! {
            // A stop from the kubelet comes before anything else.
            biased;
            _ = term.recv() => {
                info!("stop signal: fast shutdown of PostgreSQL");
                return postgres.stop_fast().await.map(Ended::Terminated);
            }
            status = postgres.child.wait() => {
                let fatal = postgres.last_fatal.lock().ok().and_then(|mut l| l.take());
                return reap(settings, status, fatal).await;
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
        match fetch(api, settings).await {
            Some(now) => {
                desired = now;
                confirmed = Instant::now();
                if primary_now && desired.primary != settings.instance {
                    info!(new_primary = %desired.primary, "another instance is the primary: stopping to rejoin as a replica");
                    postgres.stop_fast().await?;
                    return Ok(Ended::Demoted);
                }
            }
            None if primary_now && confirmed.elapsed() > desired.fence_after() => {
                if replica_replied(settings, desired.fence_after()).await {
                    // Replicas still stream from us: we are not the one cut off.
                    confirmed = Instant::now();
                } else {
                    warn!(after_ms = confirmed.elapsed().as_millis() as u64, "cannot confirm the primary role with the API server or any replica: fencing (immediate shutdown)");
                    postgres.stop_immediate().await?;
                    return Ok(Ended::Fenced);
                }
            }
            None => {}
        }
    }
}
