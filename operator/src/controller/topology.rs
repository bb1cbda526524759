//! Who is what: which instances exist, which one is the primary, which replicas serve
//! reads and how far behind they are. The one place these are decided; pure.

use std::collections::BTreeMap;

use crate::api::{GeoDatabaseStatus, Role};
use crate::names::Names;
use crate::postgres::lsn;
use crate::postgres::probe::{ClusterHealth, Sample};

/// Instance names to run (ordinal order) and the primary among them.
///
/// The primary is kept whatever the count: a scale-down removes the highest-ordinal
/// replicas, never the primary. New instances take the lowest free ordinals.
pub fn plan_instances(
    names: &Names,
    wanted: usize,
    existing: &[String],
    chosen_primary: Option<&str>,
) -> (Vec<String>, String) {
    let wanted = wanted.max(1);
    let primary = chosen_primary
        .map(str::to_owned)
        .unwrap_or_else(|| names.instance(1));
    let mut existing: Vec<(u32, String)> = existing
        .iter()
        .filter(|name| **name != primary)
        .filter_map(|name| names.ordinal(name).map(|o| (o, name.clone())))
        .collect();
    existing.sort();
    let mut chosen = vec![primary.clone()];
    chosen.extend(existing.into_iter().map(|(_, name)| name).take(wanted - 1));
    let mut ordinal = 1;
    while chosen.len() < wanted {
        let candidate = names.instance(ordinal);
        if !chosen.contains(&candidate) {
            chosen.push(candidate);
        }
        ordinal += 1;
    }
    chosen.sort_by_key(|name| names.ordinal(name).unwrap_or(u32::MAX));
    (chosen, primary)
}

/// The primary as recorded in the status: `currentPrimary`, else `fallback` (a cluster
/// that has recorded none yet).
pub fn current_primary(status: &GeoDatabaseStatus, fallback: &str) -> String {
    status
        .current_primary
        .clone()
        .unwrap_or_else(|| fallback.to_owned())
}

/// No failover or switchover is under way: the current primary is also the target.
pub fn primary_confirmed(status: &GeoDatabaseStatus, fallback: &str) -> bool {
    let current = current_primary(status, fallback);
    status.target_primary.as_ref().is_none_or(|t| *t == current)
}

/// WAL bytes a replica has yet to replay, against the primary's position.
pub fn lag_bytes(primary: Option<&Sample>, replica: &Sample) -> Option<i64> {
    let primary_lsn = primary.and_then(Sample::primary)?.lsn?;
    let replayed = replica.replayed_lsn.or(replica.lsn)?;
    Some(lsn::distance(primary_lsn, replayed))
}

/// Age of the last replayed transaction while the replica has WAL to replay; 0 when
/// it has replayed everything (an idle primary sends no new transactions).
pub fn lag_seconds(primary: Option<&Sample>, replica: &Sample) -> f64 {
    if lag_bytes(primary, replica).unwrap_or(0) > 0 {
        replica.replay_age.unwrap_or(0.0)
    } else {
        0.0
    }
}

/// A replica serves reads while it streams and is within `max_lag_bytes`.
pub fn serves_reads(primary: Option<&Sample>, replica: &Sample, max_lag_bytes: i64) -> bool {
    replica.in_recovery
        && replica.receiving
        && lag_bytes(primary, replica).is_none_or(|lag| lag <= max_lag_bytes)
}

/// The role an instance has now: what its pod's labels say, and its status shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstanceRole {
    pub role: Role,
    pub serving_reads: bool,
}

/// Roles of `instances`: `primary` only on a confirmed primary (no transition under way);
/// replicas serve reads while they stream within `max_lag_bytes`.
pub fn roles(
    instances: &[String],
    status: &GeoDatabaseStatus,
    fallback_primary: &str,
    health: &ClusterHealth,
    max_lag_bytes: i64,
) -> BTreeMap<String, InstanceRole> {
    let current = current_primary(status, fallback_primary);
    let confirmed = primary_confirmed(status, fallback_primary);
    let primary_sample = health.sample(&current).and_then(Sample::primary);
    instances
        .iter()
        .map(|instance| {
            let is_primary = confirmed && *instance == current;
            let serving_reads = !is_primary
                && health
                    .sample(instance)
                    .is_some_and(|s| serves_reads(primary_sample, s, max_lag_bytes));
            let role = if is_primary {
                Role::Primary
            } else {
                Role::Replica
            };
            (
                instance.clone(),
                InstanceRole {
                    role,
                    serving_reads,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::probe::InstanceHealth;

    fn names() -> Names {
        Names {
            cluster: "geo".into(),
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn new_cluster_starts_at_one() {
        let (instances, primary) = plan_instances(&names(), 3, &[], None);
        assert_eq!(instances, strings(&["geo-1", "geo-2", "geo-3"]));
        assert_eq!(primary, "geo-1");
    }

    #[test]
    fn scale_down_keeps_the_primary() {
        let existing = strings(&["geo-1", "geo-2", "geo-3"]);
        let (instances, primary) = plan_instances(&names(), 1, &existing, Some("geo-3"));
        assert_eq!(instances, strings(&["geo-3"]));
        assert_eq!(primary, "geo-3");
        let (instances, _) = plan_instances(&names(), 2, &existing, Some("geo-3"));
        assert_eq!(instances, strings(&["geo-1", "geo-3"]));
    }

    #[test]
    fn scale_up_fills_gaps() {
        let existing = strings(&["geo-1", "geo-3"]);
        let (instances, _) = plan_instances(&names(), 4, &existing, Some("geo-1"));
        assert_eq!(instances, strings(&["geo-1", "geo-2", "geo-3", "geo-4"]));
    }

    #[test]
    fn zero_means_one() {
        let (instances, _) = plan_instances(&names(), 0, &[], None);
        assert_eq!(instances.len(), 1);
    }

    fn primary(lsn: u64) -> Sample {
        Sample {
            lsn: Some(lsn),
            ..Sample::default()
        }
    }

    fn replica(received: u64, replayed: u64) -> Sample {
        Sample {
            in_recovery: true,
            receiving: true,
            lsn: Some(received),
            replayed_lsn: Some(replayed),
            ..Sample::default()
        }
    }

    #[test]
    fn lag_is_measured_to_the_replayed_position() {
        let p = primary(10_000);
        assert_eq!(lag_bytes(Some(&p), &replica(10_000, 4_000)), Some(6_000));
        assert_eq!(lag_bytes(Some(&p), &replica(12_000, 12_000)), Some(0));
        assert_eq!(lag_bytes(None, &replica(1, 1)), None);
        let waiting = Sample {
            replay_age: Some(7.5),
            ..replica(10_000, 4_000)
        };
        assert_eq!(lag_seconds(Some(&p), &waiting), 7.5);
        let idle = Sample {
            replay_age: Some(300.0),
            ..replica(10_000, 10_000)
        };
        assert_eq!(lag_seconds(Some(&p), &idle), 0.0);
    }

    #[test]
    fn lagging_or_disconnected_replicas_do_not_serve_reads() {
        let p = primary(10_000);
        assert!(serves_reads(Some(&p), &replica(10_000, 9_000), 1_000));
        assert!(!serves_reads(Some(&p), &replica(10_000, 8_000), 1_000));
        let disconnected = Sample {
            receiving: false,
            ..replica(10_000, 10_000)
        };
        assert!(!serves_reads(Some(&p), &disconnected, 1_000));
        // Without a primary to compare with, a streaming replica keeps serving.
        assert!(serves_reads(None, &replica(5, 5), 0));
        assert!(!serves_reads(Some(&p), &p, 1_000));
    }

    #[test]
    fn only_a_confirmed_primary_is_labelled_primary() {
        let health = ClusterHealth {
            instances: [("geo-1", primary(100)), ("geo-2", replica(100, 100))]
                .into_iter()
                .map(|(n, s)| {
                    (
                        n.to_owned(),
                        InstanceHealth {
                            sample: Some(s),
                            reachable: true,
                            ..InstanceHealth::default()
                        },
                    )
                })
                .collect(),
        };
        let instances = strings(&["geo-1", "geo-2"]);
        let mut status = GeoDatabaseStatus {
            current_primary: Some("geo-1".into()),
            ..GeoDatabaseStatus::default()
        };
        let steady = roles(&instances, &status, "geo-1", &health, 1000);
        assert_eq!(steady["geo-1"].role, Role::Primary);
        assert!(steady["geo-2"].serving_reads);
        status.target_primary = Some("geo-2".into());
        let switching = roles(&instances, &status, "geo-1", &health, 1000);
        assert_eq!(switching["geo-1"].role, Role::Replica);
        assert_eq!(switching["geo-2"].role, Role::Replica);
    }
}
