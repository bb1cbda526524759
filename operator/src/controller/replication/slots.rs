//! One physical replication slot per replica, on the confirmed primary.

use tracing::{info, warn};

use crate::api::GeoDatabase;
use crate::builders::Cluster;
use crate::controller::{certificates, Context};
use crate::names::Names;
use crate::postgres::admin;
use crate::postgres::probe::{ClusterHealth, Sample};

/// Create the slots of every other instance on the current primary; drop those of
/// instances that are gone. A failure is retried on the next reconcile: a missing slot
/// only delays a replica.
pub async fn converge_slots(
    ctx: &Context,
    cluster: &Cluster,
    db: &GeoDatabase,
    health: &ClusterHealth,
) {
    let Some(current) = db.status.as_ref().and_then(|s| s.current_primary.clone()) else {
        return;
    };
    let Some(sample) = health.sample(&current).and_then(Sample::primary) else {
        return;
    };
    let wanted: Vec<String> = cluster
        .instances
        .iter()
        .filter(|i| **i != current)
        .map(|i| Names::slot(i))
        .collect();
    let Ok(login) = certificates::login(cluster) else {
        return;
    };
    let primary = (current.as_str(), health.address(&current));
    match admin::converge_slots(primary, &login, &wanted, &sample.slots).await {
        Ok(changed) if !changed.is_empty() => {
            info!(primary = %current, ?changed, "replication slots");
            ctx.metrics.record_action("replication_slots");
        }
        Ok(_) => {}
        Err(error) => warn!(%error, primary = %current, "replication slots not converged"),
    }
}
