//! Reconcile helpers for the database chores (extensions, migrations) and the slow
//! reconcile log, kept out of `reconcile` so each file stays one screenful of purpose.

use std::time::Duration;

use kube::ResourceExt;
use tracing::info;

use super::read::Observed;
use super::replication::plan::Plan;
use super::{topology, Context};
use crate::api::GeoDatabase;
use crate::builders::Cluster;

/// A reconcile slower than this logs where its time went.
const SLOW_RECONCILE: Duration = Duration::from_millis(500);

/// The slow-reconcile line: where the time went.
pub fn log_slow(total: Duration, applied_in: Duration, status_in: Duration) {
    if total > SLOW_RECONCILE {
        info!(
            apply_ms = applied_in.as_millis() as u64,
            status_ms = status_in.as_millis() as u64,
            events_ms = (total - applied_in - status_in).as_millis() as u64,
            "slow reconcile"
        );
    }
}

/// The database chores of a reconcile: the extensions kept, and how the run of the
/// migrations' current inputs stands (told by Events).
pub async fn step(
    ctx: &Context,
    db: &GeoDatabase,
    cluster: &Cluster,
    observed: &Observed,
    health: &crate::postgres::probe::ClusterHealth,
    steady: bool,
    migration_hash: Option<String>,
) -> (
    Option<crate::api::PostgisStatus>,
    Option<(String, Option<crate::api::MigrationsStatus>)>,
) {
    let login = super::certificates::login(cluster).ok();
    let postgis = super::extensions::step(ctx, db, cluster, health, login.as_ref(), steady).await;
    let migrations = migration_hash.map(|hash| {
        let job = cluster.names.migration_job(&hash);
        let run = super::migrations::observe(db, observed, &hash, &job);
        (hash, run)
    });
    if let Some((_, run)) = &migrations {
        super::migrations::tell(ctx, db, run.as_ref()).await;
    }
    (postgis, migrations)
}

/// The digest of the migrations' inputs (with `spec.migrations`); their Job is built
/// (`cluster.migrations`) once it runs already or the primary is confirmed and writable.
pub fn migrations_gate(
    cluster: &mut Cluster,
    db: &GeoDatabase,
    observed: &Observed,
    health: &crate::postgres::probe::ClusterHealth,
    plan: &Plan,
) -> Option<String> {
    let spec = db.spec.migrations.as_ref()?;
    let hash = super::migrations::digest(spec, &observed.migration_sources);
    let job = cluster.names.migration_job(&hash);
    let exists = observed.owned.jobs.iter().any(|j| j.name_any() == job);
    let status = db.status.clone().unwrap_or_default();
    let writable = health
        .sample(&cluster.primary)
        .and_then(crate::postgres::probe::Sample::primary)
        .is_some();
    let steady = matches!(plan, Plan::Steady | Plan::Acknowledge { .. });
    // Run once per digest: a finished run is not started again if its Job is deleted.
    let done = status
        .migrations
        .as_ref()
        .is_some_and(|m| m.hash == hash && m.outcome != crate::api::MigrationOutcome::Running);
    let may_start = steady && writable && topology::primary_confirmed(&status, &cluster.primary);
    if exists || (may_start && !done) {
        cluster.migrations = Some(hash.clone());
    }
    Some(hash)
}
