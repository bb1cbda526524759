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
) -> super::status::Chores {
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
    let maintenance = maintenance_status(db, observed);
    tell_vacuum(ctx, db, maintenance.as_ref()).await;
    let seed = super::seed::observe(db, cluster, observed);
    super::seed::tell(ctx, db, seed.as_ref()).await;
    super::status::Chores {
        postgis,
        migrations,
        maintenance,
        seed,
    }
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
    // Read in place: this runs on every reconcile.
    let unset = crate::api::GeoDatabaseStatus::default();
    let status = db.status.as_ref().unwrap_or(&unset);
    // Run once per digest: a finished run is not started again if its Job is deleted.
    let done = status
        .migrations
        .as_ref()
        .is_some_and(|m| m.hash == hash && m.outcome != crate::api::MigrationOutcome::Running);
    let may_start = may_start_job(cluster, status, health, plan);
    if exists || (may_start && !done) {
        cluster.migrations = Some(hash.clone());
    }
    Some(hash)
}

/// A one-shot Job against the primary may start: the cluster is steady and its primary
/// confirmed and writable.
pub fn may_start_job(
    cluster: &Cluster,
    status: &crate::api::GeoDatabaseStatus,
    health: &crate::postgres::probe::ClusterHealth,
    plan: &Plan,
) -> bool {
    let writable = health
        .sample(&cluster.primary)
        .and_then(crate::postgres::probe::Sample::primary)
        .is_some();
    let steady = matches!(plan, Plan::Steady | Plan::Acknowledge { .. });
    steady && writable && topology::primary_confirmed(status, &cluster.primary)
}

/// The newest finished VACUUM run, from the termination messages of the vacuum pods
/// (scheduled or requested); the one recorded when no pod is left.
pub fn maintenance_status(
    db: &GeoDatabase,
    observed: &Observed,
) -> Option<crate::api::MaintenanceStatus> {
    let previous = db.status.as_ref().and_then(|s| s.maintenance.clone());
    let newest = observed
        .related
        .pods
        .iter()
        .filter(|p| {
            p.labels()
                .get(crate::names::LABEL_COMPONENT)
                .map(String::as_str)
                == Some(crate::names::COMPONENT_VACUUM)
        })
        .filter_map(vacuum_run)
        .max_by(|a, b| a.finished_at.cmp(&b.finished_at));
    match (newest, previous) {
        (Some(run), previous) => {
            let newer = previous
                .as_ref()
                .and_then(|p| p.last_vacuum.as_ref())
                .is_none_or(|last| last.finished_at <= run.finished_at);
            match newer {
                true => Some(crate::api::MaintenanceStatus {
                    last_vacuum: Some(run),
                }),
                false => previous,
            }
        }
        (None, previous) => previous,
    }
}

/// A finished vacuum pod's report (pure).
pub fn vacuum_run(pod: &k8s_openapi::api::core::v1::Pod) -> Option<crate::api::VacuumRun> {
    let terminated = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find_map(|c| c.state.as_ref()?.terminated.clone())?;
    let message = terminated.message.unwrap_or_default();
    let line = message.lines().last().unwrap_or_default();
    let mut run: crate::api::VacuumRun =
        serde_json::from_str(line).unwrap_or_else(|_| crate::api::VacuumRun {
            outcome: "failed".into(),
            error: Some(message.clone()),
            ..crate::api::VacuumRun::default()
        });
    run.pod = pod.name_any();
    run.finished_at = terminated.finished_at.map(|t| t.0.to_string());
    Some(run)
}

/// An Event for a run not seen before.
pub async fn tell_vacuum(
    ctx: &Context,
    db: &GeoDatabase,
    now: Option<&crate::api::MaintenanceStatus>,
) {
    let run = now.and_then(|m| m.last_vacuum.as_ref());
    let before = db
        .status
        .as_ref()
        .and_then(|s| s.maintenance.as_ref())
        .and_then(|m| m.last_vacuum.as_ref());
    let Some(run) = run.filter(|r| before.is_none_or(|b| b.pod != r.pod)) else {
        return;
    };
    let (dead_before, dead_after) = run.tables.iter().fold((0, 0), |(b, a), t| {
        (b + t.dead_before.max(0), a + t.dead_after.max(0))
    });
    let skipped: Vec<&str> = run
        .tables
        .iter()
        .filter(|t| t.outcome != "vacuumed")
        .map(|t| t.table.as_str())
        .collect();
    let note = format!(
        "{}: {} ({} tables in {:.1}s; dead tuples {dead_before} -> {dead_after}{}){}",
        run.pod,
        run.outcome,
        run.tables.len(),
        run.seconds,
        match skipped.is_empty() {
            true => String::new(),
            false => format!("; not vacuumed: {}", skipped.join(", ")),
        },
        run.error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
    let kind = match run.outcome.as_str() {
        "vacuumed" => kube::runtime::events::EventType::Normal,
        _ => kube::runtime::events::EventType::Warning,
    };
    ctx.event(db, kind, "VacuumFinished", note).await;
}
