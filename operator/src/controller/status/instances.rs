//! `status.instances[]`: every instance with its role, readiness and replication.

use std::collections::BTreeMap;

use crate::api::{InstanceStatus, Role};
use crate::controller::read::{pod_ready, Observed};
use crate::controller::topology::{lag_bytes, lag_seconds, InstanceRole};
use crate::postgres::lsn;
use crate::postgres::probe::{ClusterHealth, Sample};

/// Status of each instance, in the order of `roles`' keys (ordinal order).
pub fn statuses(
    roles: &BTreeMap<String, InstanceRole>,
    instances: &[String],
    current_primary: &str,
    observed: &Observed,
    health: &ClusterHealth,
) -> Vec<InstanceStatus> {
    let primary_sample = health.sample(current_primary).and_then(Sample::primary);
    instances
        .iter()
        .map(|instance| {
            let role = roles.get(instance).copied().unwrap_or(InstanceRole {
                role: Role::Replica,
                serving_reads: false,
            });
            let pod = observed.instance_pod(instance);
            let sample = health.sample(instance);
            let replica = sample.and_then(Sample::replica);
            InstanceStatus {
                name: instance.clone(),
                role: role.role,
                pod: pod.map(|p| p.metadata.name.clone().unwrap_or_default()),
                ready: pod.is_some_and(pod_ready),
                reachable: sample.is_some(),
                streaming: replica.map(|s| s.receiving),
                serving_reads: (role.role == Role::Replica).then_some(role.serving_reads),
                timeline: sample.and_then(|s| s.timeline),
                received_lsn: sample.and_then(|s| s.lsn).map(lsn::format),
                replayed_lsn: replica.and_then(|s| s.replayed_lsn).map(lsn::format),
                lag_bytes: replica.and_then(|s| lag_bytes(primary_sample, s)),
                lag_seconds: replica
                    .map(|s| (lag_seconds(primary_sample, s) * 10.0).round() / 10.0),
            }
        })
        .collect()
}
