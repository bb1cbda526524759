//! Watch caches of everything a GeoDatabase owns. The read step takes its view from
//! them instead of listing from the API server on every reconcile; the watches that fill
//! them also trigger reconciles.

use std::sync::Mutex;

use futures::Stream;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::NamespaceResourceScope;
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

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

impl Caches {
    /// Wait until every cache holds its initial list.
    pub async fn ready(&self) {
        // A dropped writer means the controller stopped; reads then see what was cached.
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
/// changed object (the controller maps it to its GeoDatabase).
pub fn watch<K>(
    client: &Client,
    namespace: &Option<String>,
    writer: Writer<K>,
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
    reflector::reflector(writer, watcher(api, config).default_backoff()).touched_objects()
}
