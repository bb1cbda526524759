//! Data volumes: growing them (a StatefulSet's claim template cannot change, so the
//! StatefulSet is recreated with its pod orphaned, and bound claims are raised), and
//! keeping or deleting them when the GeoDatabase goes.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use super::applier::Applier;
use crate::api::DeletionPolicy;
use crate::builders::Cluster;
use crate::error::{Error, Result};
use crate::names::{Names, ANNOTATION_LAST_PRIMARY, ANNOTATION_LAST_TIMELINE, ANNOTATION_RETAINED};
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
                .map_err(Error::writing(
                    format!("PersistentVolumeClaim/{}", pvc.name_any()),
                    "growing a data volume (does its StorageClass allow volume expansion?)",
                ))?;
            self.record(|c| c.resized.push(format!("{} to {size}", pvc.name_any())));
        }
        Ok(())
    }
}

/// What a deleted GeoDatabase leaves for a successor of the same name.
#[derive(Clone, Debug, Default)]
pub struct Legacy {
    /// The instance that was the primary, and its timeline.
    pub primary: Option<String>,
    pub timeline: Option<i64>,
    /// Its credential Secrets, kept under `Retain`.
    pub credentials: Vec<String>,
}

/// Deletion of a GeoDatabase: PVCs go only when the deletion policy says so. With
/// `Retain`, owner references that would let the garbage collector take a PVC (or a
/// credentials Secret) are removed, and the kept PVCs record the last primary.
pub async fn release_volumes(
    client: &Client,
    namespace: &str,
    policy: DeletionPolicy,
    pvcs: &[PersistentVolumeClaim],
    legacy: &Legacy,
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
                let patch = json!({"metadata": {
                    "ownerReferences": null,
                    "annotations": {
                        ANNOTATION_LAST_PRIMARY: legacy.primary,
                        ANNOTATION_LAST_TIMELINE: legacy.timeline.map(|t| t.to_string()),
                    },
                }});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(Error::kube("keeping a data volume"))?;
                touched.push(name);
            }
        }
    }
    if policy == DeletionPolicy::Retain {
        keep_credentials(client, namespace, &legacy.credentials).await?;
    }
    Ok(touched)
}

/// Keep the credential Secrets from the garbage collector, marked for adoption.
async fn keep_credentials(client: &Client, namespace: &str, names: &[String]) -> Result<()> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let patch = json!({"metadata": {
        "ownerReferences": null,
        "annotations": {ANNOTATION_RETAINED: "true"},
    }});
    for name in names {
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(Error::kube("keeping a credentials Secret")(e)),
        }
    }
    Ok(())
}

/// The last primary recorded on kept data volumes (the one with the highest timeline).
pub fn last_primary(pvcs: &[PersistentVolumeClaim]) -> Option<String> {
    pvcs.iter()
        .filter_map(|pvc| {
            let annotations = pvc.metadata.annotations.as_ref()?;
            let primary = annotations.get(ANNOTATION_LAST_PRIMARY)?.clone();
            let timeline: i64 = annotations
                .get(ANNOTATION_LAST_TIMELINE)
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            Some((timeline, primary))
        })
        .max()
        .map(|(_, primary)| primary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pvc(primary: Option<&str>, timeline: Option<&str>) -> PersistentVolumeClaim {
        let mut annotations = std::collections::BTreeMap::new();
        if let Some(p) = primary {
            annotations.insert(ANNOTATION_LAST_PRIMARY.to_owned(), p.to_owned());
        }
        if let Some(t) = timeline {
            annotations.insert(ANNOTATION_LAST_TIMELINE.to_owned(), t.to_owned());
        }
        let mut pvc = PersistentVolumeClaim::default();
        pvc.metadata.annotations = Some(annotations);
        pvc
    }

    #[test]
    fn the_last_primary_comes_from_the_newest_record() {
        assert_eq!(last_primary(&[]), None);
        assert_eq!(last_primary(&[pvc(None, None)]), None);
        let pvcs = [pvc(Some("geo-1"), Some("1")), pvc(Some("geo-2"), Some("3"))];
        assert_eq!(last_primary(&pvcs).as_deref(), Some("geo-2"));
    }
}
