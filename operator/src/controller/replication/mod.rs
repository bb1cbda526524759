//! Replication: measure (the health monitor), decide (`plan`, pure), carry out
//! (`execute`), and keep one replication slot per replica on the primary (`slots`).

pub mod execute;
mod lease;
pub mod plan;
mod slots;

use std::collections::BTreeMap;
use std::time::Instant;

use super::read::{pod_ready, Observed};
use super::status::conditions::TransitionState;
use super::Context;
use crate::api::GeoDatabase;
use crate::builders::Cluster;
use crate::error::{Error, Result};
use crate::postgres::probe::ClusterHealth;
pub use lease::Seen as LeaseSeen;
use plan::{Plan, PodState, View};
pub use slots::converge_slots;

/// Pods that exist, by instance.
fn pod_states(cluster: &Cluster, observed: &Observed) -> BTreeMap<String, PodState> {
    cluster
        .instances
        .iter()
        .filter_map(|instance| {
            let pod = observed.instance_pod(instance)?;
            Some((
                instance.clone(),
                PodState {
                    terminating: pod.metadata.deletion_timestamp.is_some(),
                    ready: pod_ready(pod),
                },
            ))
        })
        .collect()
}

/// Decide on the primary and carry the decision out; `db` reflects what was committed.
/// Returns the plan (its requeue, whether the cluster is steady) and what it means for
/// the `PrimaryTransition` condition.
pub async fn step(
    ctx: &Context,
    db: &mut GeoDatabase,
    cluster: &Cluster,
    observed: &Observed,
    health: &ClusterHealth,
) -> Result<(Plan, Option<TransitionState>)> {
    let pods = pod_states(cluster, observed);
    let status = db.status.clone().unwrap_or_default();
    // The Lease matters while an old primary must be seen fenced; it is watched from the
    // first failed probe of the primary on, so its expiry is known by the time the
    // failover delay has passed. Before any primary ran (no timeline) nothing fails over
    // and nothing is read.
    let primary_ran = status.timeline.is_some() && cluster.instances.len() > 1;
    let primary_failing = status
        .current_primary
        .as_deref()
        .is_some_and(|p| health.get(p).is_some_and(|h| !h.reachable));
    let moving = status.target_primary != status.current_primary || primary_failing;
    let lease = match primary_ran && moving {
        true => {
            ctx.observe_lease(&cluster.namespace, &cluster.names.cluster)
                .await?
        }
        false => None,
    };
    let plan = plan::plan(&View {
        spec: &db.spec,
        status: &status,
        instances: &cluster.instances,
        pods: &pods,
        health,
        // A primary of this GeoDatabase has been seen running (its timeline is known): a
        // new GeoDatabase over kept volumes is not failed over while its pods start.
        bootstrapped: cluster.bootstrapped && status.timeline.is_some(),
        lease: lease.as_ref(),
        now: Instant::now(),
    });
    let login = super::certificates::login(cluster).map_err(|source| Error::Postgres {
        instance: cluster.primary.clone(),
        action: "trusting the cluster's CA",
        source,
    })?;
    let poolers = execute::Poolers {
        pods: &observed.related.pods,
        password: &cluster.credentials.pooler,
    };
    let transition = execute::execute(ctx, db, &plan, health, &login, &poolers).await?;
    Ok((plan, transition))
}
