//! The finalizer: added before anything is created, removed once the deletion policy
//! has been honoured.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::info;

use super::apply::{release_volumes, Legacy};
use super::{status, Context};
use crate::api::{DeletionPolicy, GeoDatabase};
use crate::error::{Error, Result};
use crate::names::{Names, FINALIZER, LABEL_CLUSTER};

pub fn has_finalizer(db: &GeoDatabase) -> bool {
    db.finalizers().iter().any(|f| f == FINALIZER)
}

/// Add or remove our finalizer. The resourceVersion in the patch makes it fail on a
/// concurrent change instead of overwriting someone else's finalizers.
pub async fn set_finalizer(
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
    let action = if present {
        "adding the finalizer"
    } else {
        "removing the finalizer"
    };
    api.patch(
        &db.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(Error::kube(action))
}

/// How often a deletion that waits for its StatefulSets to go looks again.
const STATEFULSETS_GONE_RECHECK: Duration = Duration::from_secs(1);

/// The GeoDatabase is being deleted: keep or delete data volumes per the deletion policy.
/// Owned objects are removed by the garbage collector through their owner references.
/// `Some(action)`: not done yet, the finalizer stays.
pub async fn cleanup(db: &GeoDatabase, ctx: &Context) -> Result<Option<Action>> {
    status::write(&ctx.client, db, status::deleting(db)).await?;
    let namespace = db.namespace().ok_or(Error::MissingObjectKey)?;
    let policy = db.spec.deletion_policy;
    let names = Names::new(db);
    if policy == DeletionPolicy::Delete && statefulsets_remain(ctx, &namespace, &names).await? {
        // A StatefulSet still there recreates (empty) volumes for its pods as fast as
        // they are deleted: the volumes go only once their StatefulSets have.
        return Ok(Some(Action::requeue(STATEFULSETS_GONE_RECHECK)));
    }
    // Listed from the API server, not the watch cache: a volume the cache has not seen
    // yet must not escape the deletion policy.
    let listed = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &namespace)
        .list(&ListParams::default().labels(&format!("{LABEL_CLUSTER}={}", names.cluster)))
        .await
        .map_err(Error::kube("listing the data volumes"))?
        .items;
    let pvcs = &listed;
    let status = db.status.clone().unwrap_or_default();
    let legacy = Legacy {
        primary: status.current_primary.clone(),
        timeline: status.timeline,
        credentials: vec![
            names.superuser_secret(),
            names.replication_secret(),
            names.app_secret(),
        ],
    };
    let touched = release_volumes(&ctx.client, &namespace, policy, pvcs, &legacy).await?;
    let note = match policy {
        DeletionPolicy::Delete => format!(
            "deletionPolicy Delete: deleted data volumes [{}]",
            touched.join(", ")
        ),
        DeletionPolicy::Retain => format!(
            "deletionPolicy Retain: kept data volumes [{}]",
            pvcs.iter()
                .map(|p| p.name_any())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    // The primary Lease goes with its GeoDatabase (the agents create it; nothing owns it).
    let leases = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        ctx.client.clone(),
        &namespace,
    );
    match leases
        .delete(&Names::primary_lease(&names.cluster), &Default::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(error) => return Err(Error::kube("deleting the primary Lease")(error)),
    }
    info!(name = %db.name_any(), %namespace, %note, "GeoDatabase deleted");
    ctx.metrics.record_action("deleted");
    ctx.event(db, EventType::Normal, "Deleted", note).await;
    Ok(None)
}

/// Delete the instance StatefulSets still there (their pods follow through the garbage
/// collector); true while any of them exists.
async fn statefulsets_remain(ctx: &Context, namespace: &str, names: &Names) -> Result<bool> {
    let api = Api::<StatefulSet>::namespaced(ctx.client.clone(), namespace);
    let listed = api
        .list(&ListParams::default().labels(&format!("{LABEL_CLUSTER}={}", names.cluster)))
        .await
        .map_err(Error::kube("listing the StatefulSets"))?
        .items;
    for sts in listed
        .iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
    {
        match api
            .delete(&sts.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(Error::kube("deleting a StatefulSet")(error)),
        }
    }
    Ok(!listed.is_empty())
}
