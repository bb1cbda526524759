//! Watch caches of everything a GeoDatabase owns. The read step takes its view from
//! them instead of listing from the API server on every reconcile; the watches that fill
//! them also trigger reconciles.

use std::sync::Mutex;
use std::time::Duration;

use futures::Stream;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::NamespaceResourceScope;
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tracing::warn;

use crate::names::{LABEL_MANAGED_BY, MANAGED_BY};

/// Readers of the caches.
#[derive(Clone)]
pub struct Caches {
    pub statefulsets: Store<StatefulSet>,
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
    pub config_maps: Store<ConfigMap>,
    pub secrets: Store<Secret>,
    pub pods: Store<Pod>,
    pub pvcs: Store<PersistentVolumeClaim>,
}

/// Writers of the caches, handed to the watches when the controller starts.
pub struct Writers {
    pub statefulsets: Writer<StatefulSet>,
    pub deployments: Writer<Deployment>,
    pub services: Writer<Service>,
    pub config_maps: Writer<ConfigMap>,
    pub secrets: Writer<Secret>,
    pub pods: Writer<Pod>,
    pub pvcs: Writer<PersistentVolumeClaim>,
}

pub fn new() -> (Caches, Mutex<Option<Writers>>) {
    let (statefulsets, w_statefulsets) = reflector::store();
    let (deployments, w_deployments) = reflector::store();
    let (services, w_services) = reflector::store();
    let (config_maps, w_config_maps) = reflector::store();
    let (secrets, w_secrets) = reflector::store();
    let (pods, w_pods) = reflector::store();
    let (pvcs, w_pvcs) = reflector::store();
    (
        Caches {
            statefulsets,
            deployments,
            services,
            config_maps,
            secrets,
            pods,
            pvcs,
        },
        Mutex::new(Some(Writers {
            statefulsets: w_statefulsets,
            deployments: w_deployments,
            services: w_services,
            config_maps: w_config_maps,
            secrets: w_secrets,
            pods: w_pods,
            pvcs: w_pvcs,
        })),
    )
}

/// Keep nothing extra.
pub fn keep_all<K>(_: &mut K) {}

/// Only the labels and the readiness of pods are read.
pub fn pod_status_only(pod: &mut Pod) {
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

    async fn all_ready(&self) {
        // A dropped writer (the controller stopped) counts as ready: reads see the cache as is.
        let _ = futures::join!(
            self.statefulsets.wait_until_ready(),
            self.deployments.wait_until_ready(),
            self.services.wait_until_ready(),
            self.config_maps.wait_until_ready(),
            self.secrets.wait_until_ready(),
            self.pods.wait_until_ready(),
            self.pvcs.wait_until_ready(),
        );
    }
}

/// A watch of operator-managed objects of kind `K` that fills `writer` and yields every
/// changed object (the controller maps it to its GeoDatabase). `prune` drops parts of
/// each object the operator never reads, before it is cached.
pub fn watch<K>(
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
