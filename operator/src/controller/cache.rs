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
    /// Wait until every cache holds its initial list; say which one when it takes long.
    pub async fn ready(&self) {
        self.wait_all().await
    }

    async fn wait_all(&self) {
        async fn wait<K>(name: &str, store: &Store<K>)
        where
            K: Resource + Clone + 'static,
            K::DynamicType: Eq + std::hash::Hash + Clone,
        {
            let ready = store.wait_until_ready();
            tokio::pin!(ready);
            if tokio::time::timeout(Duration::from_secs(10), &mut ready)
                .await
                .is_err()
            {
                warn!(cache = name, "watch cache still not filled after 10 s");
                // A dropped writer means the controller stopped; reads then see the cache as is.
                let _ = ready.await;
            }
        }
        futures::join!(
            wait("statefulsets", &self.statefulsets),
            wait("deployments", &self.deployments),
            wait("services", &self.services),
            wait("configmaps", &self.config_maps),
            wait("secrets", &self.secrets),
            wait("pods", &self.pods),
            wait("persistentvolumeclaims", &self.pvcs),
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
