//! Apply step: everything `builders::build` produced, in two waves (the StatefulSets
//! last, once what their pods mount and are reached through exists), then pruning of
//! what is no longer wanted, volume growth, and the role labels of the pods (the
//! poolers reconnect when they move).

mod applier;
mod labels;
pub mod poolers;
mod volumes;

use std::collections::BTreeMap;

use futures::future::try_join_all;
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::{Resource, ResourceExt};

pub use applier::{AppliedCache, Applier, Changes};
pub use volumes::{last_primary, release_volumes, Legacy};

use super::owned::{names_of, OwnedKind, Wanted};
use super::read::Observed;
use super::topology::InstanceRole;
use crate::builders::{instance::claimed_size, Cluster, Resources};
use crate::error::Result;

fn find<'o, K: Resource>(live: &'o [K], name: &str) -> Option<&'o K> {
    live.iter().find(|o| o.name_any() == name)
}

/// Apply every object of one kind, at once.
async fn apply_all<K: OwnedKind>(applier: &Applier<'_>, desired: &[K], live: &[K]) -> Result<()> {
    try_join_all(
        desired
            .iter()
            .map(|o| applier.apply(o, find(live, &o.name_any()))),
    )
    .await
    .map(drop)
}

/// A StatefulSet: applied, or recreated when its claim template asks for another size,
/// or left while it is being recreated.
async fn apply_statefulset(
    applier: &Applier<'_>,
    cluster: &Cluster,
    sts: &StatefulSet,
    live: Option<&StatefulSet>,
) -> Result<()> {
    if let Some(live) = live {
        if live.meta().deletion_timestamp.is_some() {
            // Being recreated after a resize; applied once it is gone.
            applier.record(|c| c.requeue_soon = true);
            return Ok(());
        }
        let size = &cluster.spec.storage.size;
        let claimed = claimed_size(live);
        if claimed.is_some() && claimed != Some(size.as_str()) {
            return applier.recreate_for_resize(live, size).await;
        }
    }
    applier.apply(sts, live).await
}

/// Converge everything a cluster owns.
pub async fn apply(
    applier: &Applier<'_>,
    cluster: &Cluster,
    resources: Resources,
    observed: &Observed,
    roles: &BTreeMap<String, InstanceRole>,
) -> Result<()> {
    let Resources {
        credentials,
        service_account,
        role_binding,
        config_maps,
        secrets,
        services,
        deployments,
        statefulsets,
        cron_jobs,
        jobs,
        network_policies,
        pod_disruption_budgets,
    } = resources;
    let live = &observed.owned;
    // Everything the StatefulSets' pods mount, run as or are reached through, at once:
    // none of these objects depends on another (the connection Secrets carry passwords
    // already read or generated).
    tokio::try_join!(
        try_join_all(credentials.iter().map(|secret| {
            applier.create_once(secret, observed.secret(&secret.name_any()).is_some())
        })),
        applier.apply_unwatched(&service_account),
        applier.apply_unwatched(&role_binding),
        apply_all(applier, &config_maps, &live.config_maps),
        apply_all(applier, &secrets, &live.secrets),
        apply_all(applier, &services, &live.services),
        apply_all(applier, &deployments, &live.deployments),
        apply_all(applier, &cron_jobs, &live.cron_jobs),
        apply_all(applier, &network_policies, &live.network_policies),
        // Before the StatefulSets: their pods are covered from the start.
        apply_all(
            applier,
            &pod_disruption_budgets,
            &live.pod_disruption_budgets
        ),
    )?;
    // Then the StatefulSets: their pods start with everything above in place.
    try_join_all(statefulsets.iter().map(|sts| {
        apply_statefulset(
            applier,
            cluster,
            sts,
            find(&live.statefulsets, &sts.name_any()),
        )
    }))
    .await?;
    // A Job's pod template is immutable: an existing one is left as it is.
    try_join_all(
        jobs.iter()
            .map(|job| applier.create_if_missing(job, find(&live.jobs, &job.name_any()).is_some())),
    )
    .await?;

    let mut wanted_secrets = names_of(&secrets);
    wanted_secrets.extend(names_of(&credentials));
    let wanted = Wanted {
        statefulsets: names_of(&statefulsets),
        deployments: names_of(&deployments),
        services: names_of(&services),
        config_maps: names_of(&config_maps),
        secrets: wanted_secrets,
        cron_jobs: names_of(&cron_jobs),
        jobs: names_of(&jobs),
        network_policies: names_of(&network_policies),
        pod_disruption_budgets: names_of(&pod_disruption_budgets),
    };
    live.prune(applier, &wanted).await?;
    applier
        .grow_volumes(cluster, &observed.related.pvcs)
        .await?;
    if applier.label_roles(roles, &observed.related.pods).await? {
        // Only a confirmed primary (promoted, no transition under way) has the role.
        let primary = roles
            .iter()
            .find(|(_, r)| r.role == crate::api::Role::Primary)
            .map(|(instance, _)| cluster.service_host(instance));
        let token = crate::pooler::control::token(&cluster.credentials.pooler);
        poolers::reconnect(&observed.related.pods, primary.as_deref(), &token).await;
    }
    Ok(())
}
