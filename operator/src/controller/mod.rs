//! The GeoDatabase controller: a pipeline per reconcile (`reconcile`), and what it runs
//! on.
//!
//! | module | what | talks to the API |
//! |---|---|---|
//! | `reconcile` | the pipeline: read, validate, build, apply, status | through the steps |
//! | `owned` | the table of owned kinds: caches, watches, pruning | watches |
//! | `read` | what exists now, from the caches | StorageClass only |
//! | `credentials` | passwords read back or generated once | Secret reads |
//! | `certificates` | the CA and server certificate, kept or issued | Secret reads |
//! | `claims` | no takeover: the wanted names are free or ours | reads |
//! | `catalog` | the buckets' backups: status, recovery targets | Secret reads, S3 |
//! | `validate` | what the schema cannot refuse (pure) | no |
//! | `policy` | what the installation allows: images (pure) | no |
//! | `topology` | instances, primary, roles, lag (pure) | no |
//! | `replication` | failover/switchover plan (pure), its execution, slots | status |
//! | `health` | the probes of every instance | no (PostgreSQL) |
//! | `apply` | server-side apply, pruning, volumes, pod labels | yes |
//! | `rollout` | one pod at a time onto a new template | pod deletions |
//! | `status` | conditions, instances, summary; one writer | status |
//! | `events` | Events for what changed | Events |
//! | `finalizer` | the deletion policy on removal | finalizer, PVCs |
//! | `runner` | the kube-runtime Controller and its error policy | watches |

mod adopt;
pub mod apply;
pub mod catalog;
pub(crate) mod certificates;
mod chores;
pub mod claims;
mod credentials;
mod events;
mod extensions;
mod finalizer;
pub mod health;
pub mod migrations;
mod monitoring;
pub mod owned;
pub mod policy;
pub mod read;
mod reconcile;
pub mod replication;
pub mod rollout;
mod runner;
mod seed;
pub mod status;
pub mod topology;
pub mod validate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::Client;

use crate::api::GeoDatabase;
use crate::runtime::metrics::Metrics;
use apply::AppliedCache;
use health::Monitor;

pub use reconcile::reconcile;
pub use runner::{error_policy, run};

const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub applied: AppliedCache,
    /// Watch caches the read step takes its view from.
    pub caches: owned::Caches,
    cache_writers: Mutex<Option<owned::Writers>>,
    /// Probes of every instance's PostgreSQL.
    pub monitor: Monitor,
    monitor_triggers: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<ObjectRef<GeoDatabase>>>>,
    /// Consecutive failures per GeoDatabase, for exponential backoff.
    failures: Mutex<HashMap<ObjectRef<GeoDatabase>, u32>>,
    /// Primary Lease records and when they were first seen, by (namespace, cluster).
    leases: Mutex<HashMap<(String, String), replication::LeaseSeen>>,
    /// The last reads of the backup buckets.
    pub catalogs: catalog::Catalogs,
    /// What this installation allows and where it runs, see `policy`.
    pub installation: policy::Installation,
    /// Whether PodMonitors are served, as last discovered.
    pod_monitors: monitoring::PodMonitorApi,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, instance: Option<String>) -> Arc<Self> {
        Self::for_installation(client, metrics, instance, policy::Installation::default())
    }

    pub fn for_installation(
        client: Client,
        metrics: Arc<Metrics>,
        instance: Option<String>,
        installation: policy::Installation,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: "geodb-operator".into(),
            instance,
        };
        let (caches, cache_writers) = owned::new();
        let (monitor, monitor_triggers) = Monitor::new(metrics.clone());
        Arc::new(Self {
            monitor,
            monitor_triggers: Mutex::new(Some(monitor_triggers)),
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            applied: AppliedCache::default(),
            caches,
            cache_writers: Mutex::new(Some(cache_writers)),
            failures: Mutex::new(HashMap::new()),
            leases: Mutex::new(HashMap::new()),
            catalogs: catalog::Catalogs::default(),
            installation,
            pod_monitors: monitoring::PodMonitorApi::default(),
        })
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

    /// Everything kept per GeoDatabase goes with it: probes, applied objects, backoff.
    fn forget(&self, key: &ObjectRef<GeoDatabase>) {
        self.monitor.forget(key);
        if let Some(namespace) = key.namespace.as_deref() {
            self.applied.forget_cluster(namespace, &key.name);
            if let Ok(mut leases) = self.leases.lock() {
                leases.remove(&(namespace.to_owned(), key.name.clone()));
            }
        }
        self.reset_backoff(key);
    }

    /// Whether anything is still kept for the GeoDatabase `name` in `namespace` (probes,
    /// applied objects or a backoff); for tests of the pruning.
    pub fn keeps(&self, namespace: &str, name: &str) -> bool {
        let key = ObjectRef::<GeoDatabase>::new(name).within(namespace);
        let backoff = self.failures.lock().is_ok_and(|m| m.contains_key(&key));
        let lease = self
            .leases
            .lock()
            .is_ok_and(|m| m.contains_key(&(namespace.to_owned(), name.to_owned())));
        self.monitor.tracks(&key) || self.applied.remembers(namespace, name) || backoff || lease
    }
}
