//! Health and replication of every instance, measured by the operator.
//!
//! One task per GeoDatabase probes each instance's PostgreSQL every `PROBE_INTERVAL`
//! over a connection it keeps open (reconnecting only when it breaks or the pod moves),
//! with every connect and query bounded (`postgres::TIMEOUT`). Reconciles read the
//! latest snapshot; they never probe. A change that matters to a decision
//! (reachability, role, streaming, serving reads, timeline, slots) triggers a reconcile
//! at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::{mpsc, watch};

use super::read::Observed;
use super::topology::{lag_bytes, lag_seconds, serves_reads};
use crate::api::GeoDatabase;
use crate::builders::Cluster;
use crate::postgres::probe::{probe, ClusterHealth, Connection};
use crate::postgres::Login;
use crate::runtime::metrics::{InstanceLabels, Metrics};

pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// While the primary changes: each step waits on what a probe sees (the old primary
/// down or a replica, the target answering), and a paused pooler waits on the steps.
pub const TRANSITION_PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// What to probe.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Targets {
    pub namespace: String,
    pub cluster: String,
    /// Instance name -> pod IP (empty when it has none).
    pub instances: BTreeMap<String, String>,
    pub primary: String,
    pub max_lag_bytes: i64,
    /// `None` until the decide step has the cluster's CA.
    pub login: Option<Login>,
    /// A failover or switchover is under way: probe every `TRANSITION_PROBE_INTERVAL`.
    pub transition: bool,
}

/// The part of an instance's health a reconcile must react to.
#[derive(Debug, PartialEq)]
struct Digest {
    instance: String,
    reachable: bool,
    in_recovery: bool,
    receiving: bool,
    serving_reads: bool,
    timeline: Option<i64>,
    slots: usize,
    kept_data: usize,
    /// A primary's archiving works (`ContinuousArchiving`'s status): a change is
    /// reported at once, not at the next resync.
    archiving: Option<bool>,
}

/// What a reconcile must react to; lag figures change all the time and are left out.
fn digest(health: &ClusterHealth, targets: &Targets) -> Vec<Digest> {
    let primary = health.sample(&targets.primary);
    health
        .instances
        .iter()
        .map(|(name, h)| {
            let sample = health.sample(name);
            Digest {
                instance: name.clone(),
                reachable: h.reachable,
                in_recovery: sample.is_some_and(|s| s.in_recovery),
                receiving: sample.is_some_and(|s| s.receiving),
                serving_reads: sample
                    .is_some_and(|s| serves_reads(primary, s, targets.max_lag_bytes)),
                timeline: sample.and_then(|s| s.timeline),
                slots: sample.map(|s| s.slots.len()).unwrap_or(0),
                kept_data: sample.map(|s| s.kept_data.len()).unwrap_or(0),
                archiving: sample
                    .and_then(|s| s.primary())
                    .map(|s| super::status::archiving::assess(Some(&s.archiver)).0),
            }
        })
        .collect()
}

/// What the health monitor probes: the pod IP of every instance.
pub fn targets(cluster: &Cluster, observed: &Observed, db: &GeoDatabase) -> Targets {
    Targets {
        namespace: cluster.namespace.clone(),
        cluster: cluster.names.cluster.clone(),
        instances: cluster
            .instances
            .iter()
            .map(|instance| {
                let ip = observed
                    .instance_pod(instance)
                    .and_then(|p| p.status.as_ref()?.pod_ip.clone())
                    .unwrap_or_default();
                (instance.clone(), ip)
            })
            .collect(),
        primary: super::topology::current_primary(
            &db.status.clone().unwrap_or_default(),
            &cluster.primary,
        ),
        max_lag_bytes: cluster.spec.replication.max_lag_bytes,
        login: super::certificates::login(cluster).ok(),
        transition: db
            .status
            .as_ref()
            .is_some_and(|s| s.target_primary.is_some() && s.target_primary != s.current_primary),
    }
}

struct Tracked {
    targets: watch::Sender<Targets>,
    health: Arc<Mutex<ClusterHealth>>,
    task: tokio::task::AbortHandle,
}

/// The probes of every GeoDatabase this operator reconciles.
pub struct Monitor {
    clusters: Mutex<HashMap<ObjectRef<GeoDatabase>, Tracked>>,
    trigger: mpsc::UnboundedSender<ObjectRef<GeoDatabase>>,
    metrics: Arc<Metrics>,
}

impl Monitor {
    /// The monitor and the stream of GeoDatabases it wants reconciled.
    pub fn new(metrics: Arc<Metrics>) -> (Self, mpsc::UnboundedReceiver<ObjectRef<GeoDatabase>>) {
        let (trigger, triggered) = mpsc::unbounded_channel();
        (
            Self {
                clusters: Mutex::new(HashMap::new()),
                trigger,
                metrics,
            },
            triggered,
        )
    }

    /// A reconcile of `key` on call: for what it reads outside the API (a bucket) that
    /// changed in the background.
    pub fn waker(&self, key: ObjectRef<GeoDatabase>) -> impl FnOnce() + Send + 'static {
        let trigger = self.trigger.clone();
        move || {
            let _ = trigger.send(key);
        }
    }

    /// Start (or update) the probes of a GeoDatabase.
    pub fn track(&self, key: ObjectRef<GeoDatabase>, targets: Targets) {
        let Ok(mut clusters) = self.clusters.lock() else {
            return;
        };
        if let Some(tracked) = clusters.get(&key) {
            tracked.targets.send_if_modified(|current| {
                let changed = *current != targets;
                *current = targets;
                changed
            });
            return;
        }
        let (sender, receiver) = watch::channel(targets);
        let health = Arc::new(Mutex::new(ClusterHealth::default()));
        let task = tokio::spawn(probe_loop(
            key.clone(),
            receiver,
            health.clone(),
            self.trigger.clone(),
            self.metrics.clone(),
        ))
        .abort_handle();
        clusters.insert(
            key,
            Tracked {
                targets: sender,
                health,
                task,
            },
        );
    }

    pub fn health(&self, key: &ObjectRef<GeoDatabase>) -> ClusterHealth {
        self.clusters
            .lock()
            .ok()
            .and_then(|clusters| {
                clusters
                    .get(key)
                    .and_then(|t| t.health.lock().ok().map(|h| h.clone()))
            })
            .unwrap_or_default()
    }

    /// Whether a GeoDatabase is probed.
    pub fn tracks(&self, key: &ObjectRef<GeoDatabase>) -> bool {
        self.clusters.lock().is_ok_and(|c| c.contains_key(key))
    }

    /// Stop probing a GeoDatabase that is gone.
    pub fn forget(&self, key: &ObjectRef<GeoDatabase>) {
        let removed = self.clusters.lock().ok().and_then(|mut c| c.remove(key));
        if let Some(tracked) = removed {
            tracked.task.abort();
            let targets = tracked.targets.borrow().clone();
            for instance in targets.instances.keys() {
                self.metrics.forget_instance(&InstanceLabels {
                    namespace: targets.namespace.clone(),
                    cluster: targets.cluster.clone(),
                    instance: instance.clone(),
                });
            }
        }
    }
}

fn record_metrics(metrics: &Metrics, targets: &Targets, health: &ClusterHealth) {
    let primary = health.sample(&targets.primary);
    for (name, h) in &health.instances {
        let labels = InstanceLabels {
            namespace: targets.namespace.clone(),
            cluster: targets.cluster.clone(),
            instance: name.clone(),
        };
        let sample = health.sample(name);
        metrics
            .instance_up
            .get_or_create(&labels)
            .set(i64::from(h.reachable));
        metrics
            .instance_is_primary
            .get_or_create(&labels)
            .set(i64::from(sample.is_some_and(|s| !s.in_recovery)));
        if let Some(timeline) = sample.and_then(|s| s.timeline) {
            metrics
                .instance_timeline
                .get_or_create(&labels)
                .set(timeline);
        }
        if let Some(a) = sample.and_then(|s| s.primary()).map(|s| &s.archiver) {
            metrics
                .archive_failures
                .get_or_create(&labels)
                .set(a.failed_count);
            metrics
                .archive_waiting_segments
                .get_or_create(&labels)
                .set(a.waiting);
            if let Some(age) = a.archived_age {
                metrics
                    .archive_last_success_age_seconds
                    .get_or_create(&labels)
                    .set(age);
            }
        }
        if let Some(s) = sample.filter(|s| s.in_recovery) {
            if let Some(lag) = lag_bytes(primary, s) {
                metrics.replica_lag_bytes.get_or_create(&labels).set(lag);
            }
            metrics
                .replica_lag_seconds
                .get_or_create(&labels)
                .set(lag_seconds(primary, s));
        }
    }
}

async fn probe_loop(
    key: ObjectRef<GeoDatabase>,
    mut targets: watch::Receiver<Targets>,
    health: Arc<Mutex<ClusterHealth>>,
    trigger: mpsc::UnboundedSender<ObjectRef<GeoDatabase>>,
    metrics: Arc<Metrics>,
) {
    let mut connections: HashMap<String, Connection> = HashMap::new();
    let mut last_digest = None;
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            // New targets (a pod moved, an instance was added): probe at once.
            changed = targets.changed() => if changed.is_err() { return; },
        }
        let current = targets.borrow_and_update().clone();
        next = tokio::time::Instant::now()
            + match current.transition {
                true => TRANSITION_PROBE_INTERVAL,
                false => PROBE_INTERVAL,
            };
        connections.retain(|name, _| current.instances.contains_key(name));
        let probes = current.instances.iter().map(|(name, address)| {
            let kept = connections.remove(name);
            let (name, address, login) = (name.clone(), address.clone(), current.login.clone());
            async move {
                let result = probe(kept, &name, address, login).await;
                (name, result)
            }
        });
        let results = join_all(probes).await;
        let now = Instant::now();
        let snapshot = {
            let Ok(mut health) = health.lock() else {
                return;
            };
            health
                .instances
                .retain(|name, _| current.instances.contains_key(name));
            for (name, (connection, result)) in results {
                if let Some(connection) = connection {
                    connections.insert(name.clone(), connection);
                }
                let entry = health.instances.entry(name.clone()).or_default();
                entry.address = current.instances.get(&name).cloned().unwrap_or_default();
                entry.record(result, now);
            }
            health.clone()
        };
        record_metrics(&metrics, &current, &snapshot);
        let digest = digest(&snapshot, &current);
        if last_digest.as_ref() != Some(&digest) {
            last_digest = Some(digest);
            if trigger.send(key.clone()).is_err() {
                return;
            }
        }
    }
}
