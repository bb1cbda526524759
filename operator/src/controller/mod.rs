//! The GeoDatabase reconciler: read -> validate -> build -> apply -> status.

pub mod apply;
pub mod cache;
pub mod failover;
pub mod health;
pub mod instances;
pub mod read;
pub mod rollout;
pub mod status;
pub mod validate;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn, Instrument};

use crate::api::{GeoDatabase, Role};
use crate::builders::Cluster;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::names::{Names, FINALIZER, LABEL_CLUSTER};
use apply::{AppliedCache, PodRole};
use failover::{Plan, PodState};
use health::{ClusterHealth, Monitor, Targets};

/// Periodic resync of a converged GeoDatabase.
const RESYNC: Duration = Duration::from_secs(300);
/// Recheck of a GeoDatabase whose spec is invalid (a missing StorageClass may appear).
const INVALID_RECHECK: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);
/// Reconciles slower than this log where their time went.
const SLOW_RECONCILE: Duration = Duration::from_millis(500);

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub applied: AppliedCache,
    /// Watch caches the read step takes its view from.
    pub caches: cache::Caches,
    cache_writers: Mutex<Option<cache::Writers>>,
    /// Probes of every instance's PostgreSQL.
    pub monitor: Monitor,
    monitor_triggers: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<ObjectRef<GeoDatabase>>>>,
    /// Consecutive failures per GeoDatabase, for exponential backoff.
    failures: Mutex<HashMap<ObjectRef<GeoDatabase>, u32>>,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, instance: Option<String>) -> Arc<Self> {
        let reporter = Reporter {
            controller: "geodb-operator".into(),
            instance,
        };
        let (caches, cache_writers) = cache::new();
        let (monitor, monitor_triggers) = Monitor::new(metrics.clone());
        Arc::new(Self {
            monitor,
            monitor_triggers: Mutex::new(Some(monitor_triggers)),
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            applied: AppliedCache::default(),
            caches,
            cache_writers,
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// Publish an Event on the GeoDatabase. A failure to publish is logged, not fatal.
    pub async fn event(&self, db: &GeoDatabase, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: reason.to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &db.object_ref(&())).await {
            warn!(%error, reason, "could not publish event");
        }
    }

    fn backoff(&self, key: ObjectRef<GeoDatabase>) -> Duration {
        let failures = match self.failures.lock() {
            Ok(mut map) => {
                let n = map.entry(key).or_insert(0);
                *n = n.saturating_add(1);
                *n
            }
            Err(_) => 1,
        };
        // 1 s, 2 s, 4 s, ... capped.
        Duration::from_secs(1u64 << failures.saturating_sub(1).min(9)).min(MAX_BACKOFF)
    }

    fn reset_backoff(&self, key: &ObjectRef<GeoDatabase>) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(key);
        }
    }
}

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
            ctx.monitor.forget(&key);
            if has_finalizer(&db) {
                cleanup(&db, &ctx).await?;
                set_finalizer(&api, &db, false).await?;
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
    // A reconcile that hangs (an API call that never answers) must not hold its object
    // forever: it fails, and the object is retried with backoff.
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

fn has_finalizer(db: &GeoDatabase) -> bool {
    db.finalizers().iter().any(|f| f == FINALIZER)
}

/// Add or remove our finalizer. The resourceVersion in the patch makes it fail on a
/// concurrent change instead of overwriting someone else's finalizers.
async fn set_finalizer(
    api: &Api<GeoDatabase>,
    db: &GeoDatabase,
    present: bool,
) -> Result<GeoDatabase> {
    let mut finalizers: Vec<String> = db
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if present {
        finalizers.push(FINALIZER.to_owned());
    }
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": db.resource_version()}
    });
    api.patch(
        &db.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(Error::kube(if present {
        "adding the finalizer"
    } else {
        "removing the finalizer"
    }))
}

/// read -> validate -> build -> apply -> status
async fn converge(db: &GeoDatabase, ctx: &Context) -> Result<Action> {
    let observed = read::observe(&ctx.client, &ctx.caches, db).await?;

    let problems = validate::validate(&db.spec, observed.storage_class_exists);
    if !problems.is_empty() {
        let status = status::invalid_status(db, &problems, &status::now());
        let was_message = degraded_message(db);
        status::write(&ctx.client, db, &status).await?;
        let message = degraded_message_of(&status);
        if message != was_message {
            warn!(name = %db.name_any(), namespace = db.namespace().unwrap_or_default(), problems = ?problems, "spec not applied");
            ctx.metrics.record_action("invalid_spec");
            ctx.event(
                db,
                EventType::Warning,
                "InvalidSpec",
                message.unwrap_or_default(),
            )
            .await;
        }
        return Ok(Action::requeue(INVALID_RECHECK));
    }

    let names = Names::new(db);
    let namespace = db.namespace().ok_or(Error::MissingObjectKey)?;
    let (credentials, generated) =
        read::credentials(&ctx.client, &namespace, &names, &observed).await?;
    let wanted = usize::try_from(db.spec.instances).unwrap_or(1);
    let chosen_primary = |db: &GeoDatabase| {
        db.status.as_ref().and_then(|s| {
            s.target_primary
                .clone()
                .or_else(|| s.current_primary.clone())
        })
    };
    let (instances, primary) = instances::plan(
        &names,
        wanted,
        &observed.instance_names(),
        chosen_primary(db).as_deref(),
    );
    let mut cluster =
        Cluster::new(db, instances, primary, credentials).ok_or(Error::MissingObjectKey)?;
    cluster.bootstrapped = status::bootstrapped(&cluster, &observed);

    // Replication: measure, decide, carry out (failover and switchover).
    let key = ObjectRef::from_obj(db);
    let mut db = db.clone();
    ctx.monitor
        .track(key.clone(), probe_targets(&cluster, &observed, &db));
    let health = ctx.monitor.health(&key);
    let pods = pod_states(&cluster, &observed);
    let plan = failover::plan(&failover::View {
        spec: &db.spec,
        status: &db.status.clone().unwrap_or_default(),
        instances: &cluster.instances,
        pods: &pods,
        health: &health,
        bootstrapped: cluster.bootstrapped,
        now: Instant::now(),
    });
    let transition =
        failover::execute(ctx, &mut db, &plan, &health, &cluster.credentials.superuser).await?;
    if let Some(target) = chosen_primary(&db) {
        cluster.primary = target;
    }
    let roles = pod_roles(&cluster, &db, &health);

    let applying = Instant::now();
    let changes = apply::converge(&ctx.client, &ctx.applied, &cluster, &observed, &roles).await?;
    let mut rolling = false;
    if matches!(plan, Plan::Steady | Plan::Acknowledge { .. }) {
        converge_slots(ctx, &cluster, &db, &health).await;
        let state = rollout::observe(
            &cluster.instances,
            &cluster.primary,
            &observed.statefulsets,
            &observed.pods,
            &health,
            status::pod_ready,
        );
        rolling = state.values().any(|s| s.outdated);
        if let Some(instance) = rollout::next_to_roll(&cluster.instances, &cluster.primary, &state)
        {
            rollout::delete_pod(&ctx.client, &namespace, &instance).await?;
            info!(%instance, primary = instance == cluster.primary, "rolling out the new pod template");
            ctx.metrics.record_action("pod_rolled");
            ctx.event(
                &db,
                EventType::Normal,
                "RollingUpdate",
                format!(
                    "restarting {instance} with the new pod template{}",
                    if instance == cluster.primary {
                        " (the primary goes last: a replica takes over)"
                    } else {
                        ""
                    }
                ),
            )
            .await;
        }
    }
    let applied_in = applying.elapsed();
    let status = status::converged_status(
        &db,
        &cluster,
        &observed,
        &health,
        transition,
        &status::now(),
    );
    status::write(&ctx.client, &db, &status).await?;
    let status_in = applying.elapsed() - applied_in;
    report_changes(&db, ctx, &changes, generated).await;
    if applying.elapsed() > SLOW_RECONCILE {
        info!(
            apply_ms = applied_in.as_millis() as u64,
            status_ms = status_in.as_millis() as u64,
            events_ms = (applying.elapsed() - applied_in - status_in).as_millis() as u64,
            "slow reconcile"
        );
    }
    Ok(if let Some(soon) = plan.requeue() {
        Action::requeue(soon)
    } else if changes.requeue_soon || rolling {
        Action::requeue(Duration::from_secs(2))
    } else {
        Action::requeue(RESYNC)
    })
}

/// What the health monitor probes: the pod IP of every instance.
fn probe_targets(cluster: &Cluster, observed: &read::Observed, db: &GeoDatabase) -> Targets {
    Targets {
        namespace: cluster.namespace.clone(),
        cluster: cluster.names.cluster.clone(),
        instances: cluster
            .instances
            .iter()
            .map(|instance| {
                let ip = observed
                    .pod(&Names::pod(instance))
                    .and_then(|p| p.status.as_ref()?.pod_ip.clone())
                    .unwrap_or_default();
                (instance.clone(), ip)
            })
            .collect(),
        primary: db
            .status
            .as_ref()
            .and_then(|s| s.current_primary.clone())
            .unwrap_or_else(|| cluster.primary.clone()),
        max_lag_bytes: cluster.spec.replication.max_lag_bytes,
        superuser_password: cluster.credentials.superuser.clone(),
    }
}

fn pod_states(cluster: &Cluster, observed: &read::Observed) -> BTreeMap<String, PodState> {
    cluster
        .instances
        .iter()
        .filter_map(|instance| {
            let pod = observed.pod(&Names::pod(instance))?;
            Some((
                instance.clone(),
                PodState {
                    terminating: pod.metadata.deletion_timestamp.is_some(),
                    ready: status::pod_ready(pod),
                },
            ))
        })
        .collect()
}

/// Role labels: `primary` only on a primary that is confirmed (no failover under way);
/// replicas serve reads while they stream within `maxLagBytes`.
fn pod_roles(
    cluster: &Cluster,
    db: &GeoDatabase,
    health: &ClusterHealth,
) -> BTreeMap<String, PodRole> {
    let status = db.status.clone().unwrap_or_default();
    let current = status
        .current_primary
        .clone()
        .unwrap_or_else(|| cluster.primary.clone());
    let confirmed = status.target_primary.as_ref().is_none_or(|t| *t == current);
    let primary_sample = health.sample(&current).filter(|s| !s.in_recovery);
    cluster
        .instances
        .iter()
        .map(|instance| {
            let is_primary = confirmed && *instance == current;
            let serving_reads = !is_primary
                && health.sample(instance).is_some_and(|s| {
                    health::serves_reads(primary_sample, s, cluster.spec.replication.max_lag_bytes)
                });
            (
                instance.clone(),
                PodRole {
                    role: if is_primary {
                        Role::Primary
                    } else {
                        Role::Replica
                    },
                    serving_reads,
                },
            )
        })
        .collect()
}

/// Replication slots on the confirmed primary: one per other instance.
async fn converge_slots(
    ctx: &Context,
    cluster: &Cluster,
    db: &GeoDatabase,
    health: &ClusterHealth,
) {
    let Some(current) = db.status.as_ref().and_then(|s| s.current_primary.clone()) else {
        return;
    };
    let Some(sample) = health.sample(&current).filter(|s| !s.in_recovery) else {
        return;
    };
    let wanted: Vec<String> = cluster
        .instances
        .iter()
        .filter(|i| **i != current)
        .map(|i| Names::slot(i))
        .collect();
    let address = health
        .get(&current)
        .map(|h| h.address.clone())
        .unwrap_or_default();
    match failover::converge_slots(
        &address,
        &cluster.credentials.superuser,
        &current,
        &wanted,
        &sample.slots,
    )
    .await
    {
        Ok(changed) if !changed.is_empty() => {
            info!(primary = %current, ?changed, "replication slots");
            ctx.metrics.record_action("replication_slots");
        }
        Ok(_) => {}
        // Retried on the next reconcile; a missing slot only delays a replica.
        Err(error) => warn!(%error, "replication slots not converged"),
    }
}

fn degraded_message_of(status: &crate::api::GeoDatabaseStatus) -> Option<String> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == status::DEGRADED && c.status == "True")
        .map(|c| c.message.clone())
}

fn degraded_message(db: &GeoDatabase) -> Option<String> {
    db.status.as_ref().and_then(degraded_message_of)
}

async fn report_changes(
    db: &GeoDatabase,
    ctx: &Context,
    changes: &apply::Changes,
    generated: bool,
) {
    if changes.is_empty() {
        return;
    }
    let name = db.name_any();
    let namespace = db.namespace().unwrap_or_default();
    info!(%name, %namespace, created = ?changes.created, updated = ?changes.updated,
        deleted = ?changes.deleted, resized = ?changes.resized, relabelled = ?changes.relabelled,
        "applied changes");
    if generated {
        ctx.metrics.record_action("credentials_generated");
        ctx.event(
            db,
            EventType::Normal,
            "CredentialsCreated",
            "generated passwords for the superuser, replication and application roles".into(),
        )
        .await;
    }
    let groups: [(&str, &str, &Vec<String>); 5] = [
        ("Created", "created", &changes.created),
        ("Updated", "updated", &changes.updated),
        (
            "Deleted",
            "deleted objects no longer wanted",
            &changes.deleted,
        ),
        ("VolumeResized", "growing data volumes", &changes.resized),
        ("RoleLabelled", "labelled pods", &changes.relabelled),
    ];
    for (reason, verb, items) in groups {
        if items.is_empty() {
            continue;
        }
        ctx.metrics.record_action(&reason.to_lowercase());
        let mut note = format!("{verb}: {}", items.join(", "));
        note.truncate(1000);
        ctx.event(db, EventType::Normal, reason, note).await;
    }
}

/// The GeoDatabase is being deleted: keep or delete data volumes per the deletion policy.
/// Owned objects are removed by the garbage collector through their owner references.
async fn cleanup(db: &GeoDatabase, ctx: &Context) -> Result<Action> {
    let observed = read::observe(&ctx.client, &ctx.caches, db).await?;
    status::write(&ctx.client, db, &status::deleting_status(db)).await?;
    let namespace = db.namespace().ok_or(Error::MissingObjectKey)?;
    let policy = db.spec.deletion_policy;
    let touched = apply::release_volumes(&ctx.client, &namespace, policy, &observed.pvcs).await?;
    let note = match policy {
        crate::api::DeletionPolicy::Delete => {
            format!(
                "deletionPolicy Delete: deleted data volumes [{}]",
                touched.join(", ")
            )
        }
        crate::api::DeletionPolicy::Retain => format!(
            "deletionPolicy Retain: kept data volumes [{}]",
            observed
                .pvcs
                .iter()
                .map(|p| p.name_any())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    info!(name = %db.name_any(), %namespace, %note, "GeoDatabase deleted");
    ctx.metrics.record_action("deleted");
    ctx.event(db, EventType::Normal, "Deleted", note).await;
    Ok(Action::await_change())
}

pub fn error_policy(db: Arc<GeoDatabase>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.record_error(error.metric_label());
    if matches!(error, Error::StaleView) {
        // Not a failure: the next reconcile sees the newer object.
        return Action::requeue(Duration::from_millis(200));
    }
    let delay = ctx.backoff(ObjectRef::from_obj(db.as_ref()));
    warn!(name = %db.name_any(), namespace = db.namespace().unwrap_or_default(),
        error = %error, label = error.metric_label(), retry_in_ms = delay.as_millis() as u64,
        "reconcile failed");
    Action::requeue(delay)
}

/// Watch GeoDatabases (in `namespace`, or all) and everything they own until `shutdown`.
/// Runs once per Context: it takes the writers of the Context's caches.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let Some(writers) = ctx.cache_writers.lock().ok().and_then(|mut w| w.take()) else {
        warn!("controller already running for this context");
        return;
    };
    let Some(triggers) = ctx.monitor_triggers.lock().ok().and_then(|mut t| t.take()) else {
        warn!("controller already running for this context");
        return;
    };
    // The health monitor asks for a reconcile when an instance changes state.
    let triggers = futures::stream::unfold(triggers, |mut triggers| async move {
        triggers.recv().await.map(|key| (key, triggers))
    });
    let client = ctx.client.clone();
    let geodatabases: Api<GeoDatabase> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let to_cluster = |labels: &std::collections::BTreeMap<String, String>, ns: Option<String>| {
        Some(ObjectRef::<GeoDatabase>::new(labels.get(LABEL_CLUSTER)?).within(&ns?))
    };
    Controller::new(geodatabases, watcher::Config::default())
        .owns_stream(cache::watch::<StatefulSet>(
            &client,
            &namespace,
            writers.statefulsets,
            cache::keep_all,
        ))
        .owns_stream(cache::watch::<Deployment>(
            &client,
            &namespace,
            writers.deployments,
            cache::keep_all,
        ))
        .owns_stream(cache::watch::<Service>(
            &client,
            &namespace,
            writers.services,
            cache::keep_all,
        ))
        .owns_stream(cache::watch::<ConfigMap>(
            &client,
            &namespace,
            writers.config_maps,
            cache::keep_all,
        ))
        .owns_stream(cache::watch::<Secret>(
            &client,
            &namespace,
            writers.secrets,
            cache::keep_all,
        ))
        .watches_stream(
            cache::watch(&client, &namespace, writers.pods, cache::pod_status_only),
            move |pod| to_cluster(pod.labels(), pod.namespace()),
        )
        .watches_stream(
            cache::watch::<PersistentVolumeClaim>(
                &client,
                &namespace,
                writers.pvcs,
                cache::keep_all,
            ),
            move |pvc| to_cluster(pvc.labels(), pvc.namespace()),
        )
        .reconcile_on(triggers)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile ended with an error");
            }
        })
        .await;
}
