//! Rolling a new pod template out, one instance at a time: the StatefulSets use the
//! `OnDelete` strategy and the operator deletes outdated pods itself, replicas first and
//! the primary last (its deletion is a clean failover to an updated replica), and only
//! while every instance is ready and every replica streams.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use kube::runtime::events::EventType;
use kube::{Api, Client, ResourceExt};
use tracing::info;

use super::read::{pod_ready, Observed};
use super::Context;
use crate::api::GeoDatabase;
use crate::builders::Cluster;
use crate::error::{Error, Result};
use crate::names::Names;
use crate::postgres::probe::ClusterHealth;

const REVISION_LABEL: &str = "controller-revision-hash";

/// Where one instance stands in a rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceRollout {
    pub outdated: bool,
    /// Ready, not terminating, and (replicas) streaming.
    pub settled: bool,
}

/// The instance whose pod to delete next, if any. Nothing while an updated instance is
/// still settling (one at a time); outdated replicas before the primary, broken ones
/// first (a restart can only help them); the primary only once every replica is settled.
pub fn next_to_roll(
    instances: &[String],
    primary: &str,
    state: &BTreeMap<String, InstanceRollout>,
) -> Option<String> {
    if instances
        .iter()
        .any(|i| state.get(i).is_none_or(|s| !s.outdated && !s.settled))
    {
        return None;
    }
    let replica = |settled: bool| {
        instances.iter().find(|i| {
            *i != primary
                && state
                    .get(*i)
                    .is_some_and(|s| s.outdated && s.settled == settled)
        })
    };
    if let Some(next) = replica(false).or_else(|| replica(true)) {
        return Some(next.clone());
    }
    let replicas_settled = instances
        .iter()
        .filter(|i| *i != primary)
        .all(|i| state.get(i).is_some_and(|s| s.settled));
    instances
        .iter()
        .find(|i| *i == primary && replicas_settled && state.get(*i).is_some_and(|s| s.outdated))
        .cloned()
}

/// Where each instance stands: outdated (its pod runs an older revision) and settled.
pub fn observe(
    instances: &[String],
    primary: &str,
    statefulsets: &[StatefulSet],
    pods: &[Pod],
    health: &ClusterHealth,
) -> BTreeMap<String, InstanceRollout> {
    instances
        .iter()
        .filter_map(|instance| {
            let sts = statefulsets.iter().find(|s| s.name_any() == *instance)?;
            let pod = pods.iter().find(|p| p.name_any() == Names::pod(instance))?;
            let update_revision = sts.status.as_ref()?.update_revision.clone()?;
            let outdated = pod.labels().get(REVISION_LABEL) != Some(&update_revision);
            let streaming =
                *instance == primary || health.sample(instance).is_some_and(|s| s.receiving);
            let settled = pod.metadata.deletion_timestamp.is_none() && pod_ready(pod) && streaming;
            Some((instance.clone(), InstanceRollout { outdated, settled }))
        })
        .collect()
}

async fn delete_pod(client: &Client, namespace: &str, instance: &str) -> Result<()> {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .delete(&Names::pod(instance), &DeleteParams::default())
        .await
        .map_err(Error::kube("deleting an outdated instance pod"))?;
    Ok(())
}

/// A rollout as it stands: what is outdated, what goes next, and what it waits for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollout {
    /// Instances whose pod runs an older template.
    pub outdated: Vec<String>,
    /// The pod to delete in this reconcile, if its turn has come.
    pub next: Option<String>,
    /// Instances not yet ready and streaming, which the next step waits for.
    pub unsettled: Vec<String>,
}

impl Rollout {
    pub fn rolling(&self) -> bool {
        !self.outdated.is_empty()
    }

    /// What the `Progressing` condition says while pods roll.
    pub fn describe(&self, primary: &str) -> Option<String> {
        if !self.rolling() {
            return None;
        }
        let outdated = self.outdated.join(", ");
        Some(match &self.next {
            Some(next) if next == primary => format!(
                "rolling out the new pod template: restarting the primary {next} last (a replica takes over); outdated: {outdated}"
            ),
            Some(next) => format!("rolling out the new pod template: restarting {next}; outdated: {outdated}"),
            None => format!(
                "rolling out the new pod template one instance at a time; outdated: {outdated}; waiting for {} to be ready and streaming",
                if self.unsettled.is_empty() { "a pod".to_owned() } else { self.unsettled.join(", ") }
            ),
        })
    }
}

/// Where the rollout stands and which pod goes next (pure).
pub fn plan(cluster: &Cluster, observed: &Observed, health: &ClusterHealth) -> Rollout {
    let state = observe(
        &cluster.instances,
        &cluster.primary,
        &observed.owned.statefulsets,
        &observed.related.pods,
        health,
    );
    let pick = |f: fn(&InstanceRollout) -> bool| -> Vec<String> {
        cluster
            .instances
            .iter()
            .filter(|i| state.get(*i).is_none_or(f))
            .cloned()
            .collect()
    };
    Rollout {
        outdated: pick(|s| s.outdated),
        next: next_to_roll(&cluster.instances, &cluster.primary, &state),
        unsettled: pick(|s| !s.settled),
    }
}

/// Delete the pod whose turn has come (after the status said so).
pub async fn execute(
    ctx: &Context,
    db: &GeoDatabase,
    cluster: &Cluster,
    rollout: &Rollout,
) -> Result<()> {
    let Some(instance) = rollout.next.as_deref() else {
        return Ok(());
    };
    delete_pod(&ctx.client, &cluster.namespace, instance).await?;
    let primary = instance == cluster.primary;
    info!(%instance, primary, "rolling out the new pod template");
    ctx.metrics.record_action("pod_rolled");
    let note = if primary {
        " (the primary goes last: a replica takes over)"
    } else {
        ""
    };
    ctx.event(
        db,
        EventType::Normal,
        "RollingUpdate",
        format!("restarting {instance} with the new pod template{note}"),
    )
    .await;
    Ok(())
}

/// With no transition under way: the replication slots converge, and the rollout of a
/// changed pod template is planned.
pub async fn plan_after_slots(
    ctx: &Context,
    steady: bool,
    (cluster, db, observed): (&Cluster, &crate::api::GeoDatabase, &super::read::Observed),
    health: &crate::postgres::probe::ClusterHealth,
) -> Rollout {
    if !steady {
        return Rollout::default();
    }
    super::replication::converge_slots(ctx, cluster, db, health).await;
    plan(cluster, observed, health)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(v: &[(&str, bool, bool)]) -> BTreeMap<String, InstanceRollout> {
        v.iter()
            .map(|(n, outdated, settled)| {
                (
                    (*n).to_owned(),
                    InstanceRollout {
                        outdated: *outdated,
                        settled: *settled,
                    },
                )
            })
            .collect()
    }

    fn instances() -> Vec<String> {
        ["geo-1", "geo-2", "geo-3"].map(String::from).to_vec()
    }

    #[test]
    fn replicas_roll_before_the_primary() {
        let s = state(&[
            ("geo-1", true, true),
            ("geo-2", true, true),
            ("geo-3", false, true),
        ]);
        assert_eq!(
            next_to_roll(&instances(), "geo-1", &s).as_deref(),
            Some("geo-2")
        );
        let s = state(&[
            ("geo-1", true, true),
            ("geo-2", false, true),
            ("geo-3", false, true),
        ]);
        assert_eq!(
            next_to_roll(&instances(), "geo-1", &s).as_deref(),
            Some("geo-1")
        );
        let s = state(&[
            ("geo-1", false, true),
            ("geo-2", false, true),
            ("geo-3", false, true),
        ]);
        assert_eq!(next_to_roll(&instances(), "geo-1", &s), None);
    }

    #[test]
    fn a_rollout_says_what_it_does_and_waits_for() {
        let waiting = Rollout {
            outdated: vec!["geo-1".into()],
            next: None,
            unsettled: vec!["geo-2".into()],
        };
        let message = waiting.describe("geo-1").unwrap();
        assert!(message.contains("waiting for geo-2"), "{message}");
        let primary = Rollout {
            next: Some("geo-1".into()),
            ..waiting.clone()
        };
        assert!(primary
            .describe("geo-1")
            .unwrap()
            .contains("primary geo-1 last"));
        assert_eq!(Rollout::default().describe("geo-1"), None);
    }

    #[test]
    fn nothing_rolls_while_an_instance_is_unsettled() {
        let s = state(&[
            ("geo-1", true, true),
            ("geo-2", false, false),
            ("geo-3", true, true),
        ]);
        assert_eq!(next_to_roll(&instances(), "geo-1", &s), None);
        // A broken outdated replica goes first; the primary waits for it.
        let s = state(&[
            ("geo-1", true, true),
            ("geo-2", false, true),
            ("geo-3", true, false),
        ]);
        assert_eq!(
            next_to_roll(&instances(), "geo-1", &s).as_deref(),
            Some("geo-3")
        );
        let s = state(&[
            ("geo-1", true, true),
            ("geo-2", true, false),
            ("geo-3", false, true),
        ]);
        assert_eq!(
            next_to_roll(&instances(), "geo-1", &s).as_deref(),
            Some("geo-2")
        );
        let s = state(&[("geo-1", true, true), ("geo-2", true, true)]);
        assert_eq!(
            next_to_roll(&instances(), "geo-1", &s),
            None,
            "geo-3 has no pod yet"
        );
    }
}
