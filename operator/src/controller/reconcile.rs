//! One reconciliation of a GeoDatabase, as a pipeline:
//!
//! ```text
//! read -> validate -> decide (credentials, topology, replication) -> build -> apply -> status
//! ```
//!
//! Only `read`, `replication`, `apply`, `rollout` and `status` talk to the API server;
//! `validate`, `topology` and `builders` are pure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use tracing::{info, warn, Instrument};

use super::apply::{self, Applier};
use super::chores;
use super::finalizer::{cleanup, has_finalizer, set_finalizer};
use super::read::Observed;
use super::replication::{self, plan::Plan};
use super::status::conditions::{is_true, now, Reason, Type};
use super::{
    adopt, catalog, certificates, claims, credentials, events, policy, read, rollout, status,
    topology, validate, Context,
};
use crate::api::{GeoDatabase, Role};
use crate::builders::{self, Cluster};
use crate::error::{Error, Result};
use crate::names::Names;
use crate::pod_contract::BOOTSTRAPPED_KEY;

/// Periodic resync of a converged GeoDatabase.
const RESYNC: Duration = Duration::from_secs(300);
/// Recheck of a GeoDatabase whose spec is invalid: what it names and is not watched (a
/// StorageClass, a ConfigMap of migrations or metric queries) may appear or be fixed.
const INVALID_RECHECK: Duration = Duration::from_secs(20);
/// How soon to look again while a pod runs unready.
const AWAITING_RECHECK: Duration = Duration::from_secs(5);
/// How soon a change of a migrations ConfigMap is seen.
const SOURCES_RECHECK: Duration = Duration::from_secs(20);
/// A reconcile that hangs (an API call that never answers) must not hold its object.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);
/// One reconciliation of a GeoDatabase, wrapped in the finalizer that honours its
/// deletion policy.
pub async fn reconcile(db: Arc<GeoDatabase>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    ctx.metrics.reconciliations.inc();
    let namespace = db.namespace().ok_or(Error::MissingObjectKey)?;
    let api: Api<GeoDatabase> = Api::namespaced(ctx.client.clone(), &namespace);
    let key = ObjectRef::from_obj(db.as_ref());
    // Every log line of this reconcile carries the object's namespace and name.
    let span = tracing::info_span!("reconcile", namespace = %namespace, name = %db.name_any());
    let pipeline = async {
        if db.meta().deletion_timestamp.is_some() {
            ctx.forget(&key);
            if has_finalizer(&db) {
                if let Some(wait) = cleanup(&db, &ctx).await? {
                    return Ok(wait);
                }
                // Cleanup wrote status, which moved the resourceVersion: the finalizer is
                // removed from the object as it is now, not as this reconcile first saw it.
                match api.get_opt(&db.name_any()).await {
                    Ok(Some(now)) => {
                        set_finalizer(&api, &now, false).await?;
                    }
                    Ok(None) => {}
                    Err(error) => {
                        return Err(Error::kube("reading the deleted GeoDatabase")(error))
                    }
                }
            }
            return Ok(Action::await_change());
        }
        if !has_finalizer(&db) {
            // Added before anything is created, so nothing can be left behind untracked;
            // the reconcile goes on at once with the object the update returned.
            let updated = set_finalizer(&api, &db, true).await?;
            return converge(&updated, &ctx).await;
        }
        converge(&db, &ctx).await
    }
    .instrument(span);
    let result = match tokio::time::timeout(RECONCILE_TIMEOUT, pipeline).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout(RECONCILE_TIMEOUT)),
    };
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.reset_backoff(&key);
    }
    result
}

/// The spec cannot be applied: Degraded with the problems, an Event when they change,
/// nothing else touched.
async fn refuse(ctx: &Context, db: &GeoDatabase, problems: &[String]) -> Result<Action> {
    report_refusal(
        ctx,
        db,
        status::invalid(db, problems, &now()),
        "invalid_spec",
    )
    .await
}

/// The API server refused an object being applied (what came before it stays): Degraded
/// with the server's words and an Event, as for an invalid spec, instead of retrying
/// the same request in silence.
async fn refused(ctx: &Context, db: &GeoDatabase, object: &str, message: &str) -> Result<Action> {
    let message = format!("the API server refused {object}: {message}");
    let computed = status::refused(db, Reason::ApplyRefused, message, &now());
    report_refusal(ctx, db, computed, "apply_refused").await
}

/// Write a Degraded status (an Event when it changed) and look again later.
async fn report_refusal(
    ctx: &Context,
    db: &GeoDatabase,
    computed: crate::api::GeoDatabaseStatus,
    action: &str,
) -> Result<Action> {
    if degraded(Some(&computed)) != degraded(db.status.as_ref()) {
        ctx.metrics.record_action(action);
    }
    write_status(ctx, db, computed).await?;
    Ok(Action::requeue(INVALID_RECHECK))
}

/// Write the status; a `Degraded` condition that turned True (or changed) is also an Event.
async fn write_status(
    ctx: &Context,
    db: &GeoDatabase,
    computed: crate::api::GeoDatabaseStatus,
) -> Result<()> {
    let before = degraded(db.status.as_ref());
    let now = degraded(Some(&computed));
    status::write(&ctx.client, db, computed).await?;
    if let Some((reason, message)) = now.filter(|now| Some(now) != before.as_ref()) {
        warn!(%reason, %message, "degraded");
        ctx.event(db, EventType::Warning, &reason, message).await;
    }
    Ok(())
}

/// The reason and message of a True `Degraded` condition.
fn degraded(status: Option<&crate::api::GeoDatabaseStatus>) -> Option<(String, String)> {
    status?
        .condition(Type::Degraded.as_str())
        .filter(|c| is_true(Some(c)))
        .map(|c| (c.reason.clone(), c.message.clone()))
}

/// The first primary has run: recorded in the instance ConfigMap, or seen now.
fn bootstrapped(cluster: &Cluster, observed: &Observed) -> bool {
    let recorded = observed
        .owned
        .config_maps
        .iter()
        .find(|c| c.name_any() == cluster.names.config_map())
        .and_then(|c| c.data.as_ref()?.get(BOOTSTRAPPED_KEY).cloned())
        .is_some_and(|v| v == "true");
    recorded
        || observed
            .instance_pod(&cluster.primary)
            .is_some_and(read::pod_ready)
}

/// The builders' input: the spec with the instances, the primary and the passwords.
/// What `decide` settled: the builders' input, whether credentials were generated now,
/// and why no primary can be chosen yet (see `adopt`).
struct Decided {
    cluster: Cluster,
    generated: bool,
    choosing: Option<String>,
    /// What keeps the spec from being applied that only the decisions reveal.
    problems: Vec<String>,
}

async fn decide(ctx: &Context, db: &GeoDatabase, observed: &Observed) -> Result<Decided> {
    let names = Names::new(db);
    let namespace = db.namespace().ok_or(Error::MissingObjectKey)?;
    let uid = db.uid().ok_or(Error::MissingObjectKey)?;
    let (credentials, generated) =
        credentials::credentials(ctx, &namespace, &uid, &names, observed).await?;
    let wanted = usize::try_from(db.spec.instances).unwrap_or(1);
    // A new GeoDatabase over kept volumes starts with the primary they recorded.
    let legacy = apply::last_primary(&observed.related.pvcs);
    let mut chosen = db
        .status
        .as_ref()
        .and_then(|s| s.chosen_primary())
        .or(legacy.as_deref())
        .map(str::to_owned);
    let mut choosing = None;
    let mut surveyed = false;
    if chosen.is_none() && !observed.related.pvcs.is_empty() {
        // Volumes exist and nothing says who was primary: their contents decide.
        let (instances, _) =
            topology::plan_instances(&names, wanted, &observed.instance_names(), None);
        match adopt::survey(observed, &instances).await {
            adopt::Survey::Newest(instance) => {
                info!(%instance, "the volumes chose the primary: the furthest history");
                chosen = Some(instance);
                surveyed = true;
            }
            adopt::Survey::Empty => {}
            adopt::Survey::Waiting(why) => choosing = Some(why),
        }
    }
    let (instances, primary) = topology::plan_instances(
        &names,
        wanted,
        &observed.instance_names(),
        chosen.as_deref(),
    );
    let subject = certificates::Subject::new(&namespace, &uid, &names, &instances, &db.spec);
    let now_unix = k8s_openapi::jiff::Timestamp::now().as_second();
    let (tls, problems) = certificates::tls(ctx, &subject, observed, now_unix).await?;
    let mut cluster =
        Cluster::new(db, instances, primary, credentials).ok_or(Error::MissingObjectKey)?;
    cluster.tls = Some(tls);
    cluster.bootstrapped = bootstrapped(&cluster, observed) || legacy.is_some() || surveyed;
    cluster.operator_namespace = ctx.installation.operator_namespace.clone();
    cluster.standby_ready = db.status.as_ref().is_some_and(|s| {
        s.instances
            .iter()
            .any(|i| i.role == Role::Replica && i.serving_reads == Some(true))
    });
    Ok(Decided {
        cluster,
        generated,
        choosing,
        problems,
    })
}

/// What keeps the spec from being applied: the pure checks, then (only when they pass)
/// the recovery source's catalog.
async fn problems(ctx: &Context, db: &GeoDatabase, observed: &Observed) -> Vec<String> {
    let mut problems = validate::validate(&db.spec, observed.storage_class_exists);
    problems.extend(policy::image_problem(
        &db.spec,
        &ctx.installation.allowed_images,
    ));
    problems.extend(validate::validate_backup(&db.spec, &observed.named_secrets));
    problems.extend(validate::validate_tls(&db.spec, &observed.named_secrets));
    problems.extend(super::migrations::problems(
        db.spec.migrations.as_ref(),
        &observed.migration_sources,
    ));
    problems.extend(validate::custom_queries_problem(
        db.spec.monitoring.custom_queries.as_deref(),
        observed.custom_queries.as_ref(),
    ));
    problems.extend(validate::validate_recovery(
        &db.spec,
        &db.namespace().unwrap_or_default(),
        &db.name_any(),
    ));
    if problems.is_empty() {
        problems.extend(catalog::recovery_refusal(ctx, db, observed).await);
    }
    problems
}

/// The role of every instance as the (possibly just committed) status says.
fn roles_now(
    cluster: &Cluster,
    db: &GeoDatabase,
    health: &crate::postgres::probe::ClusterHealth,
) -> std::collections::BTreeMap<String, topology::InstanceRole> {
    let status = db.status.clone().unwrap_or_default();
    let max_lag = cluster.spec.replication.max_lag_bytes;
    topology::roles(
        &cluster.instances,
        &status,
        &cluster.primary,
        health,
        max_lag,
    )
}

/// Volumes without a recorded primary: every object is applied (so that the pods and
/// their agents start), no primary is written, and the status says what it waits for.
async fn wait_for_volumes(
    ctx: &Context,
    db: &GeoDatabase,
    cluster: &Cluster,
    observed: &Observed,
    why: &str,
) -> Result<Action> {
    let applier = Applier::new(
        &ctx.client,
        &cluster.namespace,
        &cluster.names.cluster,
        &ctx.applied,
    );
    let no_roles = std::collections::BTreeMap::new();
    let applied = apply::apply(
        &applier,
        cluster,
        builders::build(cluster),
        observed,
        &no_roles,
    )
    .await;
    if let Err(Error::Refused { object, message }) = &applied {
        return refused(ctx, db, object, message).await;
    }
    applied?;
    write_status(ctx, db, status::choosing(db, why, &now())).await?;
    Ok(Action::requeue(Duration::from_secs(2)))
}

/// Every name the build wants is free or this GeoDatabase's; otherwise what to do
/// instead of applying anything: refuse on someone else's object, wait for the garbage
/// collector on an earlier GeoDatabase's.
async fn claim_names(
    ctx: &Context,
    db: &GeoDatabase,
    cluster: &Cluster,
    observed: &Observed,
) -> Result<Option<Action>> {
    let applier = Applier::new(
        &ctx.client,
        &cluster.namespace,
        &cluster.names.cluster,
        &ctx.applied,
    );
    let check = claims::check(&applier, db, &builders::build(cluster), observed).await?;
    if !check.conflicts.is_empty() {
        let message = format!("spec not applied: {}", check.conflicts.join("; "));
        let computed = status::refused(db, Reason::NameConflict, message, &now());
        return report_refusal(ctx, db, computed, "name_conflict")
            .await
            .map(Some);
    }
    if !check.leftovers.is_empty() {
        info!(leftovers = ?check.leftovers, "waiting for the garbage collector to remove an earlier GeoDatabase's objects");
        return Ok(Some(Action::requeue(Duration::from_secs(2))));
    }
    Ok(None)
}

/// What stops a reconcile before anything is applied once the decisions are made: a
/// problem only they reveal, a name someone else holds, volumes still choosing.
async fn held(
    ctx: &Context,
    db: &GeoDatabase,
    decided: &Decided,
    observed: &Observed,
) -> Result<Option<Action>> {
    if !decided.problems.is_empty() {
        return refuse(ctx, db, &decided.problems).await.map(Some);
    }
    if let Some(action) = claim_names(ctx, db, &decided.cluster, observed).await? {
        return Ok(Some(action));
    }
    if let Some(why) = &decided.choosing {
        return wait_for_volumes(ctx, db, &decided.cluster, observed, why)
            .await
            .map(Some);
    }
    Ok(None)
}

/// read -> validate -> decide -> build -> apply -> status
async fn converge(db: &GeoDatabase, ctx: &Context) -> Result<Action> {
    let observed = read::observe(ctx, db).await?;
    let problems = problems(ctx, db, &observed).await;
    if !problems.is_empty() {
        return refuse(ctx, db, &problems).await;
    }
    let decided = decide(ctx, db, &observed).await?;
    if let Some(action) = held(ctx, db, &decided, &observed).await? {
        return Ok(action);
    }
    let (mut cluster, generated) = (decided.cluster, decided.generated);
    let key = ObjectRef::from_obj(db);
    ctx.monitor
        .track(key.clone(), super::health::targets(&cluster, &observed, db));
    let health = ctx.monitor.health(&key);
    let mut db = db.clone();
    let (plan, transition) = replication::step(ctx, &mut db, &cluster, &observed, &health).await?;
    if let Some(target) = db.status.as_ref().and_then(|s| s.chosen_primary()) {
        cluster.primary = target.to_owned();
    }
    let roles = roles_now(&cluster, &db, &health);
    let migration_hash = chores::migrations_gate(&mut cluster, &db, &observed, &health, &plan);
    super::seed::gate(&mut cluster, &db, &observed, &health, &plan);

    let applying = Instant::now();
    let applier = Applier::new(
        &ctx.client,
        &cluster.namespace,
        &cluster.names.cluster,
        &ctx.applied,
    );
    let applied = apply::apply(
        &applier,
        &cluster,
        builders::build(&cluster),
        &observed,
        &roles,
    )
    .await;
    if let Err(Error::Refused { object, message }) = &applied {
        return refused(ctx, &db, object, message).await;
    }
    applied?;
    let steady = matches!(plan, Plan::Steady | Plan::Acknowledge { .. });
    let rollout = rollout::plan_after_slots(ctx, steady, (&cluster, &db, &observed), &health).await;
    let changes = applier.into_changes();
    let applied_in = applying.elapsed();
    let backups = catalog::backups_status(ctx, &db, &observed).await;
    let chores = chores::step(
        ctx,
        &db,
        &cluster,
        &observed,
        &health,
        steady,
        migration_hash,
    )
    .await;
    let computed = status::converged(status::Converged {
        db: &db,
        cluster: &cluster,
        observed: &observed,
        health: &health,
        roles: &roles,
        transition,
        rollout: &rollout,
        backups,
        chores,
        now: &now(),
    });
    // The status says what the rollout does before it does it.
    write_status(ctx, &db, computed).await?;
    rollout::execute(ctx, &db, &cluster, &rollout).await?;
    // After the status: its reads and writes must not widen the gap between applying
    // the objects and recording what was chosen.
    super::monitoring::step(ctx, &db, &cluster).await;
    let status_in = applying.elapsed() - applied_in;
    events::report_changes(&db, ctx, &changes, generated).await;
    chores::log_slow(applying.elapsed(), applied_in, status_in);
    let changing = changes.requeue_soon || rollout.rolling();
    Ok(next_look(&plan, changing, &observed))
}

/// When to look again: as the plan says, soon while objects or pods change, within
/// `AWAITING_RECHECK` while a pod runs unready (its agent may park it, which only an
/// Event says), within `SOURCES_RECHECK` while migrations or custom metric queries read
/// ConfigMaps (not watched:
/// any ConfigMap of the namespace could be one), else at the periodic resync.
fn next_look(plan: &Plan, changing: bool, observed: &Observed) -> Action {
    let awaiting = observed.awaiting_pods();
    let sources = !observed.migration_sources.is_empty() || observed.custom_queries.is_some();
    match plan.requeue() {
        Some(soon) => Action::requeue(soon),
        None if changing => Action::requeue(Duration::from_secs(2)),
        None if awaiting => Action::requeue(AWAITING_RECHECK),
        None if sources => Action::requeue(SOURCES_RECHECK),
        None => Action::requeue(RESYNC),
    }
}
