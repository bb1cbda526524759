//! The PodMonitor step: a GeoDatabase gets a PodMonitor (see `builders::monitoring`)
//! when the Prometheus Operator's CRD is served and `spec.monitoring.podMonitor` asks for
//! it, and loses it when that is turned off. Clusters without the CRD use the plain
//! scrape configuration in `config/monitoring/`. A failure here is logged and told in an
//! Event; it never stops the rest of the reconcile.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use kube::runtime::events::EventType;
use kube::{discovery, Client};
use tracing::warn;

use super::Context;
use crate::api::GeoDatabase;
use crate::builders::monitoring::{
    pod_monitor, ANNOTATION_SPEC_HASH, POD_MONITOR_GROUP, POD_MONITOR_KIND, POD_MONITOR_VERSION,
};
use crate::builders::Cluster;
use crate::names::FIELD_MANAGER;

/// How long an answer of discovery is trusted: the CRD may be installed after geodb. One
/// request per period for all GeoDatabases.
const RECHECK: Duration = Duration::from_secs(30);

/// Whether the API server serves PodMonitors, as last discovered.
#[derive(Default)]
pub struct PodMonitorApi(Mutex<Option<(Instant, Option<ApiResource>)>>);

impl PodMonitorApi {
    async fn resource(&self, client: &Client) -> Option<ApiResource> {
        if let Ok(seen) = self.0.lock() {
            if let Some((at, resource)) = seen.as_ref() {
                if at.elapsed() < RECHECK {
                    return resource.clone();
                }
            }
        }
        let gvk = GroupVersionKind::gvk(POD_MONITOR_GROUP, POD_MONITOR_VERSION, POD_MONITOR_KIND);
        let resource = discovery::pinned_kind(client, &gvk)
            .await
            .ok()
            .map(|(r, _)| r);
        if let Ok(mut seen) = self.0.lock() {
            *seen = Some((Instant::now(), resource.clone()));
        }
        resource
    }
}

/// Whether `live` already holds what `desired` says: the digest of its spec, its labels
/// and its owner.
fn same(live: &DynamicObject, desired: &serde_json::Value) -> bool {
    let hash = live
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_SPEC_HASH));
    let labels = serde_json::to_value(&live.metadata.labels).unwrap_or_default();
    let owners = serde_json::to_value(&live.metadata.owner_references).unwrap_or_default();
    hash.map(String::as_str) == desired["metadata"]["annotations"][ANNOTATION_SPEC_HASH].as_str()
        && labels == desired["metadata"]["labels"]
        && owners == desired["metadata"]["ownerReferences"]
}

/// Keep (or remove) the GeoDatabase's PodMonitor.
pub async fn step(ctx: &Context, db: &GeoDatabase, cluster: &Cluster) {
    let Some(resource) = ctx.pod_monitors.resource(&ctx.client).await else {
        return;
    };
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &cluster.namespace, &resource);
    let name = &cluster.names.cluster;
    let live = match api.get_opt(name).await {
        Ok(live) => live,
        Err(error) => {
            warn!(%error, "could not read the PodMonitor");
            return;
        }
    };
    let result = match (db.spec.monitoring.pod_monitor, live) {
        (true, live) => {
            let desired = pod_monitor(cluster);
            if live.is_some_and(|l| same(&l, &desired)) {
                // A steady state writes nothing.
                return;
            }
            api.patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(desired),
            )
            .await
            .map(drop)
        }
        (false, Some(_)) => match api.delete(name, &DeleteParams::default()).await {
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            other => other.map(drop),
        },
        (false, None) => Ok(()),
    };
    if let Err(error) = result {
        warn!(%error, "could not keep the PodMonitor");
        ctx.event(
            db,
            EventType::Warning,
            "PodMonitorFailed",
            format!("monitoring.podMonitor: the PodMonitor {name:?} could not be kept: {error}"),
        )
        .await;
    }
}
