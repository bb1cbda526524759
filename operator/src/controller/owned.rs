//! The one table of the kinds a GeoDatabase owns and the operator watches. From it come
//! the watch caches (`Caches`, filled by `Writers`), the read step's view of them
//! (`Owned`), the set of names the apply step keeps (`Wanted`), the pruning of everything
//! else, and the watches that trigger reconciles. A kind added to the table is read,
//! applied and pruned, or nothing compiles: `apply` builds `Wanted` field by field.
//!
//! Pods and PVCs are watched too (`Related`), but they are not owned by the GeoDatabase
//! (StatefulSets own pods; PVCs outlive everything) and are never pruned here.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::time::Duration;

use futures::Stream;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::NamespaceResourceScope;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, store::Writer, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::warn;

use crate::api::GeoDatabase;
use crate::error::Result;
use crate::names::{LABEL_CLUSTER, LABEL_MANAGED_BY, MANAGED_BY};

/// What the applier needs of an owned object's type: a namespaced API kind that can be
/// sent and read back.
pub trait OwnedKind: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Wire {}

impl<K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Wire> OwnedKind for K {}

/// A value that crosses the wire and threads: serialisable both ways, cloneable, printable.
pub trait Wire: Clone + Serialize + DeserializeOwned + Debug + Send + Sync {}

impl<T: Clone + Serialize + DeserializeOwned + Debug + Send + Sync> Wire for T {}

/// Deletes owned objects that are no longer wanted (the apply step's applier).
pub trait Pruner {
    /// Delete the objects of `live` whose names are not in `wanted`.
    fn delete_unwanted<K: OwnedKind>(
        &self,
        live: &[K],
        wanted: &BTreeSet<String>,
    ) -> impl std::future::Future<Output = Result<()>> + Send;
}

/// Objects of `store` in `namespace` carrying the cluster's label.
fn cached<K>(store: &Store<K>, namespace: &str, cluster: &str) -> Vec<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .state()
        .into_iter()
        .filter(|o| {
            o.meta().namespace.as_deref() == Some(namespace)
                && o.labels().get(LABEL_CLUSTER).map(String::as_str) == Some(cluster)
        })
        .map(|o| o.as_ref().clone())
        .collect()
}

/// Keep objects controlled by this GeoDatabase (same name, same uid), so that leftovers
/// of an earlier GeoDatabase of the same name are never mistaken for ours.
fn controlled_by<K: Resource>(items: Vec<K>, uid: &str) -> Vec<K> {
    items
        .into_iter()
        .filter(|o| {
            o.owner_references()
                .iter()
                .any(|r| r.controller == Some(true) && r.uid == uid)
        })
        .collect()
}

/// Names of `objects`.
pub fn names_of<K: Resource>(objects: &[K]) -> BTreeSet<String> {
    objects.iter().map(|o| o.name_any()).collect()
}

/// The GeoDatabase a watched object belongs to, by its cluster label.
fn cluster_of<K: Resource>(obj: &K) -> Option<ObjectRef<GeoDatabase>> {
    Some(ObjectRef::new(obj.labels().get(LABEL_CLUSTER)?).within(obj.meta().namespace.as_deref()?))
}

macro_rules! owned_kinds {
    (owned { $($owned:ident: $okind:ty,)* } related { $($related:ident: $rkind:ty => $prune:path,)* }) => {
        /// Readers of the watch caches.
        #[derive(Clone)]
        pub struct Caches {
            $(pub $owned: Store<$okind>,)*
            $(pub $related: Store<$rkind>,)*
        }

        /// Writers of the caches, handed to the watches when the controller starts.
        pub struct Writers {
            $(pub $owned: Writer<$okind>,)*
            $(pub $related: Writer<$rkind>,)*
        }

        /// What exists now of every owned kind, controlled by one GeoDatabase.
        #[derive(Clone, Debug, Default)]
        pub struct Owned {
            $(pub $owned: Vec<$okind>,)*
        }

        /// Objects related to one GeoDatabase by its label, owned by someone else.
        #[derive(Clone, Debug, Default)]
        pub struct Related {
            $(pub $related: Vec<$rkind>,)*
        }

        /// Names of the owned objects to keep, per kind; everything else is pruned.
        #[derive(Clone, Debug, Default)]
        pub struct Wanted {
            $(pub $owned: BTreeSet<String>,)*
        }

        pub fn new() -> (Caches, Writers) {
            $(let $owned = reflector::store();)*
            $(let $related = reflector::store();)*
            (
                Caches { $($owned: $owned.0,)* $($related: $related.0,)* },
                Writers { $($owned: $owned.1,)* $($related: $related.1,)* },
            )
        }

        impl Caches {
            async fn all_ready(&self) {
                // A dropped writer (the controller stopped) counts as ready.
                $(let _ = self.$owned.wait_until_ready().await;)*
                $(let _ = self.$related.wait_until_ready().await;)*
            }

            /// The owned objects of the GeoDatabase `cluster` (uid `uid`) in `namespace`.
            pub fn owned(&self, namespace: &str, cluster: &str, uid: &str) -> Owned {
                Owned {
                    $($owned: controlled_by(cached(&self.$owned, namespace, cluster), uid),)*
                }
            }

            /// Objects carrying the cluster label, whoever owns them.
            pub fn related(&self, namespace: &str, cluster: &str) -> Related {
                Related {
                    $($related: cached(&self.$related, namespace, cluster),)*
                }
            }
        }

        impl Owned {
            /// Delete every owned object whose name is not wanted.
            pub async fn prune(&self, pruner: &impl Pruner, wanted: &Wanted) -> Result<()> {
                $(pruner.delete_unwanted(&self.$owned, &wanted.$owned).await?;)*
                Ok(())
            }
        }

        /// Add the watches of every kind to `controller`: owned kinds by owner reference,
        /// related ones by their cluster label.
        pub fn watch_all(
            controller: Controller<GeoDatabase>,
            client: &Client,
            namespace: &Option<String>,
            writers: Writers,
        ) -> Controller<GeoDatabase> {
            controller
                $(.owns_stream(watch::<$okind>(client, namespace, writers.$owned, keep_all)))*
                $(.watches_stream(watch::<$rkind>(client, namespace, writers.$related, $prune), |o| cluster_of(&o)))*
        }
    };
}

owned_kinds! {
    owned {
        statefulsets: StatefulSet,
        deployments: Deployment,
        services: Service,
        config_maps: ConfigMap,
        secrets: Secret,
        cron_jobs: CronJob,
        jobs: Job,
        network_policies: NetworkPolicy,
        pod_disruption_budgets: PodDisruptionBudget,
    }
    related {
        pods: Pod => pod_status_only,
        pvcs: PersistentVolumeClaim => keep_all,
    }
}

/// Keep nothing extra.
fn keep_all<K>(_: &mut K) {}

/// Only the labels and the readiness of pods are read.
fn pod_status_only(pod: &mut Pod) {
    pod.spec = None;
}

impl Caches {
    /// Wait until every cache holds its initial list; say so when it takes long.
    ///
    /// The stores' readiness futures share one waker slot, so with several waiters (every
    /// first reconcile, the readiness probe) all but one may never be woken: readiness is
    /// polled instead, every 20 ms.
    pub async fn ready(&self) {
        let started = tokio::time::Instant::now();
        let mut warned = false;
        loop {
            if futures::FutureExt::now_or_never(self.all_ready()).is_some() {
                return;
            }
            if !warned && started.elapsed() > Duration::from_secs(10) {
                warn!("watch caches still not filled after 10 s");
                warned = true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A watch of operator-managed objects of kind `K` that fills `writer` and yields every
/// changed object (the controller maps it to its GeoDatabase). `prune` drops parts of
/// each object the operator never reads, before it is cached.
fn watch<K>(
    client: &Client,
    namespace: &Option<String>,
    writer: Writer<K>,
    prune: fn(&mut K),
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let config = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    // Managed fields are never read and are often the largest part of an object.
    let stream = watcher(api, config)
        .default_backoff()
        .modify(move |obj: &mut K| {
            obj.meta_mut().managed_fields = None;
            prune(obj);
        });
    reflector::reflector(writer, stream).touched_objects()
}
