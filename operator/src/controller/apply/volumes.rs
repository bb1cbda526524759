//! Data volumes: growing them (a StatefulSet's claim template cannot change, so the
//! StatefulSet is recreated with its pod orphaned, and bound claims are raised), and
//! keeping or deleting them when the GeoDatabase goes.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use super::applier::Applier;
use crate::api::DeletionPolicy;
use crate::builders::Cluster;
use crate::error::{Error, Result};
use crate::names::Names;
use crate::quantity::parse_quantity;

impl Applier<'_> {
    /// Volume claim templates are immutable: a StatefulSet whose template asks for another
    /// size is deleted with its pod orphaned, and the next reconcile recreates it (it
    /// adopts the running pod). The PVCs themselves are grown by [`Self::grow_volumes`].
    pub async fn recreate_for_resize(&self, live: &StatefulSet, size: &str) -> Result<()> {
        let name = live.name_any();
        self.api::<StatefulSet>()
            .delete(&name, &DeleteParams::orphan())
            .await
            .map_err(Error::kube("recreating a StatefulSet for a volume resize"))?;
        self.record(|c| {
            c.resized.push(format!("{name} to {size}"));
            c.requeue_soon = true;
        });
        Ok(())
    }

    /// Raise the request of bound data volumes smaller than the spec. An unbound claim
    /// cannot be resized; it is grown once bound.
    pub async fn grow_volumes(
        &self,
        cluster: &Cluster,
        pvcs: &[PersistentVolumeClaim],
    ) -> Result<()> {
        let size = &cluster.spec.storage.size;
        let Some(wanted) = parse_quantity(size) else {
            return Ok(());
        };
        for instance in &cluster.instances {
            let Some(pvc) = pvcs.iter().find(|p| p.name_any() == Names::pvc(instance)) else {
                continue;
            };
            let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
            let requested = pvc
                .spec
                .as_ref()
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
                .and_then(|q| parse_quantity(&q.0));
            if !bound || pvc.meta().deletion_timestamp.is_some() {
                if requested.is_some_and(|r| r < wanted) {
                    self.record(|c| c.requeue_soon = true);
                }
                continue;
            }
            if requested.is_some_and(|r| r >= wanted) {
                continue;
            }
            self.api::<PersistentVolumeClaim>()
                .patch(
                    &pvc.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"resources": {"requests": {"storage": size}}}})),
                )
                .await
                .map_err(Error::kube(
                    "growing a data volume (does its StorageClass allow volume expansion?)",
                ))?;
            self.record(|c| c.resized.push(format!("{} to {size}", pvc.name_any())));
        }
        Ok(())
    }
}

/// Deletion of a GeoDatabase: PVCs go only when the deletion policy says so. With
/// `Retain`, owner references that would let the garbage collector take a PVC are removed.
pub async fn release_volumes(
    client: &Client,
    namespace: &str,
    policy: DeletionPolicy,
    pvcs: &[PersistentVolumeClaim],
) -> Result<Vec<String>> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let mut touched = Vec::new();
    for pvc in pvcs {
        let name = pvc.name_any();
        match policy {
            DeletionPolicy::Delete => {
                if pvc.meta().deletion_timestamp.is_none() {
                    api.delete(&name, &DeleteParams::background())
                        .await
                        .map_err(Error::kube("deleting a data volume"))?;
                    touched.push(name);
                }
            }
            DeletionPolicy::Retain => {
                if !pvc.owner_references().is_empty() {
                    api.patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"ownerReferences": null}})),
                    )
                    .await
                    .map_err(Error::kube("keeping a data volume"))?;
                    touched.push(name);
                }
            }
        }
    }
    Ok(touched)
}
