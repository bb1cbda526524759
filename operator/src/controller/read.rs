//! Read step: what exists now for one GeoDatabase, from the watch caches (and the
//! StorageClass its spec names, from the API server).

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::{Api, ResourceExt};

use super::owned::{Owned, Related};
use super::Context;
use crate::api::GeoDatabase;
use crate::error::{Error, Result};
use crate::names::Names;

/// What exists now for one GeoDatabase.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Objects it owns (its label and a controller reference with its uid).
    pub owned: Owned,
    /// Its pods and data volumes.
    pub related: Related,
    /// `Some(false)` when `spec.storage.storageClassName` names a class that does not exist.
    pub storage_class_exists: Option<bool>,
}

/// The cluster's objects, from the watch caches.
pub async fn observe(ctx: &Context, db: &GeoDatabase) -> Result<Observed> {
    let namespace = db.namespace().ok_or(Error::MissingObjectKey)?;
    let uid = db.uid().ok_or(Error::MissingObjectKey)?;
    let cluster = Names::new(db).cluster;
    ctx.caches.ready().await;
    let storage_class_exists = match &db.spec.storage.storage_class_name {
        Some(class) => Some(
            Api::<StorageClass>::all(ctx.client.clone())
                .get_opt(class)
                .await
                .map_err(Error::kube("reading the StorageClass"))?
                .is_some(),
        ),
        None => None,
    };
    Ok(Observed {
        owned: ctx.caches.owned(&namespace, &cluster, &uid),
        related: ctx.caches.related(&namespace, &cluster),
        storage_class_exists,
    })
}

impl Observed {
    pub fn secret(&self, name: &str) -> Option<&Secret> {
        self.owned.secrets.iter().find(|s| s.name_any() == name)
    }

    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.related.pods.iter().find(|p| p.name_any() == name)
    }

    /// The pod of `instance`.
    pub fn instance_pod(&self, instance: &str) -> Option<&Pod> {
        self.pod(&Names::pod(instance))
    }

    /// Instances that exist, by StatefulSet.
    pub fn instance_names(&self) -> Vec<String> {
        self.owned
            .statefulsets
            .iter()
            .map(|s| s.name_any())
            .collect()
    }
}

/// The pod is Ready.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}
