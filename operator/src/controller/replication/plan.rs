//! The failover and switchover plan: a pure decision from the status, the pods and the
//! measured health (`execute` carries it out).
//!
//! The order keeps one writable instance at most:
//! 1. `status.targetPrimary` is written first (with a resourceVersion precondition). Every
//!    instance reads it before starting PostgreSQL and while it runs, so from then on the
//!    old primary stops (or stays down) and comes back only as a replica.
//! 2. The old primary leaves the `-rw` Service (its role label changes) at once.
//! 3. The target is promoted only once the old primary is seen fenced: in recovery, gone,
//!    refusing connections, or unreachable for `failoverDelaySeconds` (by then it has
//!    fenced itself: see `agent::desired::Desired::fence_after`).
//! 4. `status.currentPrimary` follows once the target runs as a primary.
//!
//! A restarted operator finds `targetPrimary != currentPrimary` and resumes at step 3; the
//! choice is never made twice for one failure.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::api::{FailoverKind, GeoDatabaseSpec, GeoDatabaseStatus};
use crate::controller::status::conditions::Reason;
use crate::controller::topology::lag_bytes;
use crate::postgres::probe::ClusterHealth;

/// A refusal to answer connections must last this long before the instance counts as
/// down: it covers a PostgreSQL that was just being started when the target was written.
const REFUSAL_CONFIRMED: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodState {
    pub terminating: bool,
    pub ready: bool,
}

/// The primary Lease as the operator observes it (its own clock, not the record's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseObservation {
    pub holder: Option<String>,
    /// How long its record has been the same (no renewal seen).
    pub unchanged_for: Duration,
    pub duration: Duration,
}

/// Everything a decision is made from.
pub struct View<'a> {
    pub spec: &'a GeoDatabaseSpec,
    pub status: &'a GeoDatabaseStatus,
    /// Instances that should exist.
    pub instances: &'a [String],
    /// Pods that exist, by instance.
    pub pods: &'a BTreeMap<String, PodState>,
    pub health: &'a ClusterHealth,
    /// The cluster's first primary has run (a failover needs something to fail over).
    pub bootstrapped: bool,
    /// The primary Lease, while a transition is under way (`None`: no Lease, as with
    /// instances that predate it).
    pub lease: Option<&'a LeaseObservation>,
    pub now: Instant,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub kind: FailoverKind,
    pub from: String,
    pub to: String,
    pub reason: String,
    pub old_lsn: Option<u64>,
    pub promoted_lsn: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    Steady,
    /// The primary fails, not yet for `failoverDelaySeconds`.
    Watch {
        message: String,
    },
    /// Choose a new primary: write `targetPrimary`.
    Begin(Transition),
    /// The old primary may still accept writes.
    AwaitFence {
        old: String,
        message: String,
    },
    /// The old primary is fenced, but the target does not answer yet (its pod starts
    /// or moves): promoting it would fail, so the step waits for its probe.
    AwaitTarget {
        message: String,
    },
    Promote {
        to: String,
    },
    /// The target runs as primary.
    Complete {
        to: String,
        timeline: Option<i64>,
    },
    /// A failover is needed and refused; retried until it qualifies or is forced.
    Refuse {
        reason: Reason,
        message: String,
    },
    /// `spec.primary` asks for a switchover that is refused; final for that request.
    RejectSwitchover {
        request: String,
        reason: Reason,
        message: String,
    },
    /// `spec.primary` changed and needs no switchover: remember it as handled.
    Acknowledge {
        request: Option<String>,
    },
}

impl Plan {
    /// How soon to look again.
    pub fn requeue(&self) -> Option<Duration> {
        match self {
            Plan::Steady | Plan::Acknowledge { .. } | Plan::RejectSwitchover { .. } => None,
            Plan::Refuse { .. } => Some(Duration::from_secs(2)),
            // The probe of the target asks for a reconcile as soon as it answers.
            Plan::AwaitTarget { .. } => Some(Duration::from_secs(1)),
            _ => Some(Duration::from_millis(300)),
        }
    }
}

fn delay(spec: &GeoDatabaseSpec) -> Duration {
    spec.replication.failover_delay()
}

/// The old primary cannot accept writes any more: its pod is gone, it answers as a
/// replica, or it no longer holds the primary Lease (released, taken, or not renewed for
/// the whole lease, by which time it has stopped itself). Without a Lease (instances that
/// predate it) a refusal for a second or silence for the failover delay counts.
fn fenced(v: &View<'_>, old: &str) -> bool {
    let Some(pod) = v.pods.get(old) else {
        return true;
    };
    let health = v.health.get(old);
    if let Some(h) = health.filter(|h| h.reachable) {
        return h.sample.as_ref().is_some_and(|s| s.in_recovery);
    }
    if let Some(lease) = v.lease {
        return lease.holder.as_deref() != Some(old) || lease.unchanged_for >= lease.duration;
    }
    let Some(h) = health else {
        return false;
    };
    let failing = h.failing_for(v.now);
    pod.terminating || (h.refused && failing >= REFUSAL_CONFIRMED) || failing >= delay(v.spec)
}

fn describe_failure(v: &View<'_>, instance: &str) -> String {
    v.health
        .get(instance)
        .and_then(|h| h.error.clone())
        .unwrap_or_else(|| "no probe yet".to_owned())
}

/// The replica to promote when `from` fails: the most advanced received position
/// among reachable replicas, within `maxLagBytes` of the last position seen on `from`.
fn choose(v: &View<'_>, from: &str, exclude: &[&str], reason: String) -> Result<Transition, Plan> {
    let reference = v
        .health
        .get(from)
        .and_then(|h| h.sample.as_ref())
        .filter(|s| !s.in_recovery)
        .and_then(|s| s.lsn);
    let mut best: Option<(&str, u64)> = None;
    let mut skipped = Vec::new();
    for name in v.instances {
        if name == from || exclude.contains(&name.as_str()) {
            continue;
        }
        let pod_ok = v.pods.get(name).is_some_and(|p| !p.terminating);
        match v.health.sample(name) {
            Some(s) if pod_ok && s.in_recovery => {
                if let Some(lsn) = s.lsn {
                    if best.is_none_or(|(_, b)| lsn > b) {
                        best = Some((name, lsn));
                    }
                } else {
                    skipped.push(format!("{name}: has received no WAL"));
                }
            }
            _ => skipped.push(format!("{name}: {}", describe_failure(v, name))),
        }
    }
    if v.spec.replication.synchronous && !v.spec.replication.force_failover {
        check_quorum(v, from)?;
    }
    let Some((to, lsn)) = best else {
        return Err(Plan::Refuse {
            reason: Reason::NoCandidate,
            message: format!(
                "the primary {from} is down and no replica can be promoted ({})",
                skipped.join("; ")
            ),
        });
    };
    if let Some(reference) = reference {
        let behind = reference.saturating_sub(lsn);
        let max = u64::try_from(v.spec.replication.max_lag_bytes).unwrap_or(0);
        if behind > max && !v.spec.replication.force_failover {
            return Err(Plan::Refuse {
                reason: Reason::ReplicasLagging,
                message: format!(
                    "the primary {from} is down and the most advanced replica {to} is {behind} bytes behind its last position (maxLagBytes {max}); set spec.replication.forceFailover: true to promote it anyway and lose those bytes"
                ),
            });
        }
    }
    Ok(Transition {
        kind: FailoverKind::Failover,
        from: from.to_owned(),
        to: to.to_owned(),
        reason,
        old_lsn: reference,
        promoted_lsn: Some(lsn),
    })
}

/// Synchronous mode: a commit was acknowledged once any one replica flushed it, so only
/// the most advanced of *all* replicas is sure to hold every acknowledged commit. With a
/// replica out of reach (even one chosen earlier and lost before its promotion), the
/// failover waits for it rather than promote one that may lack commits.
fn check_quorum(v: &View<'_>, from: &str) -> Result<(), Plan> {
    let unreachable: Vec<String> = v
        .instances
        .iter()
        .filter(|name| *name != from)
        .filter(|name| v.health.sample(name).is_none_or(|s| !s.in_recovery))
        .map(|name| format!("{name} ({})", describe_failure(v, name)))
        .collect();
    if unreachable.is_empty() {
        return Ok(());
    }
    Err(Plan::Refuse {
        reason: Reason::SynchronousReplicaUnreachable,
        message: format!(
            "the primary {from} is down in synchronous mode and {} cannot be reached: a commit acknowledged by it alone may be missing from every other replica, so the failover waits until it can be compared; set spec.replication.forceFailover: true to promote the most advanced reachable replica anyway",
            unreachable.join(", ")
        ),
    })
}

fn check_switchover(v: &View<'_>, current: &str, request: &str) -> Result<Transition, Plan> {
    let reject = |reason: Reason, message: String| Plan::RejectSwitchover {
        request: request.to_owned(),
        reason,
        message: format!("switchover to {request} refused: {message}; nothing was changed"),
    };
    if !v.instances.iter().any(|i| i == request) {
        return Err(reject(
            Reason::SwitchoverTargetMissing,
            format!(
                "it is not an instance of this GeoDatabase (instances: {})",
                v.instances.join(", ")
            ),
        ));
    }
    let Some(primary) = v.health.sample(current).filter(|s| !s.in_recovery) else {
        return Err(reject(
            Reason::PrimaryUnavailable,
            format!("the primary {current} is not available; a failover handles that"),
        ));
    };
    if !v
        .pods
        .get(request)
        .is_some_and(|p| p.ready && !p.terminating)
    {
        return Err(reject(
            Reason::SwitchoverTargetNotReady,
            "its pod is not ready".to_owned(),
        ));
    }
    let Some(target) = v
        .health
        .sample(request)
        .filter(|s| s.in_recovery && s.receiving)
    else {
        return Err(reject(
            Reason::SwitchoverTargetNotStreaming,
            "it is not streaming from the primary".to_owned(),
        ));
    };
    let lag = lag_bytes(Some(primary), target).unwrap_or(0);
    if lag > v.spec.replication.max_lag_bytes {
        return Err(reject(
            Reason::SwitchoverTargetLagging,
            format!(
                "it is {lag} bytes behind the primary (maxLagBytes {})",
                v.spec.replication.max_lag_bytes
            ),
        ));
    }
    Ok(Transition {
        kind: FailoverKind::Switchover,
        from: current.to_owned(),
        to: request.to_owned(),
        reason: format!("spec.primary set to {request}"),
        old_lsn: primary.lsn,
        promoted_lsn: target.lsn,
    })
}

/// A choice of new primary, or the refusal to make one.
fn begin(choice: Result<Transition, Plan>) -> Plan {
    match choice {
        Ok(transition) => Plan::Begin(transition),
        Err(refusal) => refusal,
    }
}

/// A transition to `target` is under way: complete it, replace a lost target, wait for
/// the fence, or promote.
fn continue_transition(v: &View<'_>, current: &str, target: &str) -> Plan {
    if let Some(s) = v.health.sample(target).filter(|s| !s.in_recovery) {
        return Plan::Complete {
            to: target.to_owned(),
            timeline: s.timeline,
        };
    }
    // The chosen replica failed before it was promoted: it never became a primary,
    // so choosing another is safe.
    let target_lost = v.pods.get(target).is_none_or(|p| p.terminating)
        || v.health
            .get(target)
            .is_some_and(|h| !h.reachable && h.failing_for(v.now) >= delay(v.spec));
    if target_lost {
        let reason = format!("{target} failed before it was promoted");
        return begin(choose(v, current, &[target], reason));
    }
    if !fenced(v, current) {
        return Plan::AwaitFence {
            old: current.to_owned(),
            message: format!(
                "waiting for {current} to stop accepting writes before promoting {target}"
            ),
        };
    }
    if v.health.get(target).is_none_or(|h| !h.reachable) {
        return Plan::AwaitTarget {
            message: format!("waiting for {target} to answer before promoting it"),
        };
    }
    Plan::Promote {
        to: target.to_owned(),
    }
}

/// Replicas that heard from `current` within the failover delay.
fn still_streaming<'v>(v: &'v View<'_>, current: &str) -> Vec<&'v str> {
    let delay = delay(v.spec).as_secs_f64();
    v.instances
        .iter()
        .filter(|name| *name != current)
        .filter(|name| {
            v.health
                .sample(name)
                .is_some_and(|s| s.receiving && s.last_message_age.is_some_and(|age| age < delay))
        })
        .map(String::as_str)
        .collect()
}

/// The primary's pod is being deleted or its probes fail: watch, refuse, or fail over.
/// `None` when the primary is healthy (or cannot be failed over).
fn plan_failure(v: &View<'_>, current: &str) -> Option<Plan> {
    let terminating = v.pods.get(current).is_some_and(|p| p.terminating);
    let failing_for = v
        .health
        .get(current)
        .filter(|h| !h.reachable)
        .map(|h| h.failing_for(v.now));
    let can_fail_over = v.bootstrapped && v.instances.len() > 1;
    if !can_fail_over || !(terminating || failing_for.is_some()) {
        return None;
    }
    let failing_for = failing_for.unwrap_or_default();
    let delay = delay(v.spec);
    if terminating {
        let reason = format!("the primary's pod of {current} is being deleted");
        return Some(begin(choose(v, current, &[], reason)));
    }
    if failing_for < delay {
        return Some(Plan::Watch {
            message: format!(
                "the primary {current} has failed probes for {:.1}s ({}); failover after {}s",
                failing_for.as_secs_f64(),
                describe_failure(v, current),
                delay.as_secs()
            ),
        });
    }
    let streaming = still_streaming(v, current);
    if !streaming.is_empty() {
        return Some(Plan::Refuse {
            reason: Reason::ReplicasStillStreaming,
            message: format!(
                "the operator cannot reach the primary {current} ({}) but {} still stream from it: not failing over a primary that is alive",
                describe_failure(v, current),
                streaming.join(", ")
            ),
        });
    }
    let reason = format!(
        "the primary {current} failed probes for {:.1}s: {}",
        failing_for.as_secs_f64(),
        describe_failure(v, current)
    );
    Some(begin(choose(v, current, &[], reason)))
}

/// `spec.primary` changed since it was last handled: switch over, refuse, or note it.
fn plan_request(v: &View<'_>, current: &str) -> Plan {
    if v.spec.primary == v.status.handled_primary_request {
        return Plan::Steady;
    }
    match v.spec.primary.as_deref() {
        Some(request) if request != current => match check_switchover(v, current, request) {
            Ok(transition) => Plan::Begin(transition),
            Err(rejection) => rejection,
        },
        _ => Plan::Acknowledge {
            request: v.spec.primary.clone(),
        },
    }
}

/// What to do about the primary now.
pub fn plan(v: &View<'_>) -> Plan {
    let Some(current) = v.status.current_primary.as_deref() else {
        return Plan::Steady;
    };
    let target = v.status.target_primary.as_deref().unwrap_or(current);
    if target != current {
        return continue_transition(v, current, target);
    }
    plan_failure(v, current).unwrap_or_else(|| plan_request(v, current))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::probe::{InstanceHealth, Sample};

    fn spec() -> GeoDatabaseSpec {
        serde_json::from_value(serde_json::json!({"instances": 3, "storage": {"size": "1Gi"}}))
            .unwrap()
    }

    fn instances() -> Vec<String> {
        ["geo-1", "geo-2", "geo-3"].map(String::from).to_vec()
    }

    fn status(current: &str, target: Option<&str>) -> GeoDatabaseStatus {
        GeoDatabaseStatus {
            current_primary: Some(current.into()),
            target_primary: target.map(Into::into),
            ..GeoDatabaseStatus::default()
        }
    }

    fn up(sample: Sample) -> InstanceHealth {
        InstanceHealth {
            address: "10.0.0.1".into(),
            sample: Some(sample),
            reachable: true,
            ..InstanceHealth::default()
        }
    }

    fn down(now: Instant, for_secs: u64, refused: bool, last: Option<Sample>) -> InstanceHealth {
        InstanceHealth {
            address: "10.0.0.1".into(),
            sample: last,
            reachable: false,
            refused,
            failing_since: Some(now - Duration::from_secs(for_secs)),
            error: Some("connect timed out".into()),
        }
    }

    fn primary(lsn: u64) -> Sample {
        Sample {
            lsn: Some(lsn),
            timeline: Some(1),
            ..Sample::default()
        }
    }

    fn replica(lsn: u64, streaming: bool) -> Sample {
        Sample {
            in_recovery: true,
            receiving: streaming,
            lsn: Some(lsn),
            replayed_lsn: Some(lsn),
            last_message_age: streaming.then_some(0.1),
            ..Sample::default()
        }
    }

    fn pods() -> BTreeMap<String, PodState> {
        instances()
            .into_iter()
            .map(|i| {
                (
                    i,
                    PodState {
                        terminating: false,
                        ready: true,
                    },
                )
            })
            .collect()
    }

    struct Case {
        lease: Option<LeaseObservation>,
        spec: GeoDatabaseSpec,
        status: GeoDatabaseStatus,
        pods: BTreeMap<String, PodState>,
        health: ClusterHealth,
        now: Instant,
    }

    impl Case {
        fn new(status: GeoDatabaseStatus, health: &[(&str, InstanceHealth)], now: Instant) -> Self {
            Self {
                lease: None,
                spec: spec(),
                status,
                pods: pods(),
                health: ClusterHealth {
                    instances: health
                        .iter()
                        .map(|(n, h)| ((*n).to_owned(), h.clone()))
                        .collect(),
                },
                now,
            }
        }
        fn plan(&self) -> Plan {
            plan(&View {
                spec: &self.spec,
                status: &self.status,
                instances: &instances(),
                pods: &self.pods,
                health: &self.health,
                bootstrapped: true,
                lease: self.lease.as_ref(),
                now: self.now,
            })
        }
    }

    #[test]
    fn healthy_cluster_is_steady() {
        let now = Instant::now();
        let case = Case::new(
            status("geo-1", None),
            &[
                ("geo-1", up(primary(100))),
                ("geo-2", up(replica(100, true))),
            ],
            now,
        );
        assert_eq!(case.plan(), Plan::Steady);
    }

    #[test]
    fn a_short_failure_is_only_watched() {
        let now = Instant::now();
        let case = Case::new(
            status("geo-1", None),
            &[
                ("geo-1", down(now, 2, false, Some(primary(100)))),
                ("geo-2", up(replica(100, false))),
            ],
            now,
        );
        assert!(matches!(case.plan(), Plan::Watch { .. }));
    }

    #[test]
    fn failover_picks_the_most_advanced_replica() {
        let now = Instant::now();
        let case = Case::new(
            status("geo-1", None),
            &[
                ("geo-1", down(now, 6, false, Some(primary(1000)))),
                ("geo-2", up(replica(900, false))),
                ("geo-3", up(replica(950, false))),
            ],
            now,
        );
        let Plan::Begin(t) = case.plan() else {
            panic!("{:?}", case.plan())
        };
        assert_eq!((t.from.as_str(), t.to.as_str()), ("geo-1", "geo-3"));
        assert_eq!(t.old_lsn, Some(1000));
        assert_eq!(t.promoted_lsn, Some(950));
        assert_eq!(t.kind, FailoverKind::Failover);
    }

    #[test]
    fn a_deleted_primary_pod_fails_over_at_once() {
        let now = Instant::now();
        let mut case = Case::new(
            status("geo-1", None),
            &[
                ("geo-1", up(primary(100))),
                ("geo-2", up(replica(100, true))),
            ],
            now,
        );
        case.pods.get_mut("geo-1").unwrap().terminating = true;
        let Plan::Begin(t) = case.plan() else {
            panic!("{:?}", case.plan())
        };
        assert_eq!(t.to, "geo-2");
    }

    #[test]
    fn no_failover_while_replicas_still_hear_the_primary() {
        let now = Instant::now();
        let case = Case::new(
            status("geo-1", None),
            &[
                ("geo-1", down(now, 30, false, Some(primary(100)))),
                ("geo-2", up(replica(100, true))),
            ],
            now,
        );
        assert!(matches!(
            case.plan(),
            Plan::Refuse {
                reason: Reason::ReplicasStillStreaming,
                ..
            }
        ));
    }

    #[test]
    fn lagging_replicas_are_refused_unless_forced() {
        let now = Instant::now();
        let mut case = Case::new(
            status("geo-1", None),
            &[
                ("geo-1", down(now, 30, false, Some(primary(100_000_000)))),
                ("geo-2", up(replica(10, false))),
            ],
            now,
        );
        case.pods.remove("geo-3");
        assert!(matches!(
            case.plan(),
            Plan::Refuse {
                reason: Reason::ReplicasLagging,
                ..
            }
        ));
        case.spec.replication.force_failover = true;
        assert!(matches!(case.plan(), Plan::Begin(_)));
    }

    #[test]
    fn no_reachable_replica_is_a_refusal() {
        let now = Instant::now();
        let case = Case::new(
            status("geo-1", None),
            &[
                ("geo-1", down(now, 30, true, Some(primary(100)))),
                ("geo-2", down(now, 30, true, None)),
            ],
            now,
        );
        assert!(matches!(
            case.plan(),
            Plan::Refuse {
                reason: Reason::NoCandidate,
                ..
            }
        ));
    }

    #[test]
    fn promotion_waits_for_the_old_primary_to_be_fenced() {
        let now = Instant::now();
        // Still answering as a primary: wait.
        let case = Case::new(
            status("geo-1", Some("geo-2")),
            &[
                ("geo-1", up(primary(100))),
                ("geo-2", up(replica(100, true))),
            ],
            now,
        );
        assert!(matches!(case.plan(), Plan::AwaitFence { .. }));
        // Timing out, but not yet for the failover delay: it may still be running.
        let case = Case::new(
            status("geo-1", Some("geo-2")),
            &[
                ("geo-1", down(now, 2, false, None)),
                ("geo-2", up(replica(100, false))),
            ],
            now,
        );
        assert!(matches!(case.plan(), Plan::AwaitFence { .. }));
        // Refusing connections for a second: down.
        let case = Case::new(
            status("geo-1", Some("geo-2")),
            &[
                ("geo-1", down(now, 2, true, None)),
                ("geo-2", up(replica(100, false))),
            ],
            now,
        );
        assert_eq!(case.plan(), Plan::Promote { to: "geo-2".into() });
        // Back as a replica: fenced.
        let case = Case::new(
            status("geo-1", Some("geo-2")),
            &[
                ("geo-1", up(replica(100, false))),
                ("geo-2", up(replica(100, false))),
            ],
            now,
        );
        assert_eq!(case.plan(), Plan::Promote { to: "geo-2".into() });
    }

    #[test]
    fn a_target_that_does_not_answer_is_waited_for_not_promoted() {
        let now = Instant::now();
        let case = Case::new(
            status("geo-1", Some("geo-2")),
            &[
                ("geo-1", up(replica(100, false))),
                ("geo-2", down(now, 1, false, None)),
            ],
            now,
        );
        assert!(
            matches!(case.plan(), Plan::AwaitTarget { .. }),
            "{:?}",
            case.plan()
        );
    }

    #[test]
    fn with_a_lease_only_its_release_or_expiry_fences_an_unreachable_primary() {
        let now = Instant::now();
        let mut case = Case::new(
            status("geo-1", Some("geo-2")),
            &[
                // Unreachable for long and even refusing: not enough while it holds the Lease.
                ("geo-1", down(now, 60, true, Some(primary(100)))),
                ("geo-2", up(replica(100, false))),
            ],
            now,
        );
        let held = |secs| LeaseObservation {
            holder: Some("geo-1".into()),
            unchanged_for: Duration::from_secs(secs),
            duration: Duration::from_secs(5),
        };
        case.lease = Some(held(2));
        assert!(matches!(case.plan(), Plan::AwaitFence { .. }));
        case.lease = Some(held(5));
        assert_eq!(case.plan(), Plan::Promote { to: "geo-2".into() });
        case.lease = Some(LeaseObservation {
            holder: None,
            ..held(0)
        });
        assert_eq!(case.plan(), Plan::Promote { to: "geo-2".into() });
    }

    #[test]
    fn a_promoted_target_completes_and_is_never_promoted_twice() {
        let now = Instant::now();
        let mut promoted = primary(200);
        promoted.timeline = Some(2);
        let case = Case::new(
            status("geo-1", Some("geo-2")),
            &[("geo-1", up(primary(100))), ("geo-2", up(promoted))],
            now,
        );
        assert_eq!(
            case.plan(),
            Plan::Complete {
                to: "geo-2".into(),
                timeline: Some(2)
            }
        );
    }

    #[test]
    fn a_target_lost_before_promotion_is_replaced() {
        let now = Instant::now();
        let case = Case::new(
            status("geo-1", Some("geo-2")),
            &[
                ("geo-1", down(now, 30, true, Some(primary(100)))),
                ("geo-2", down(now, 30, true, None)),
                ("geo-3", up(replica(100, false))),
            ],
            now,
        );
        let Plan::Begin(t) = case.plan() else {
            panic!("{:?}", case.plan())
        };
        assert_eq!((t.from.as_str(), t.to.as_str()), ("geo-1", "geo-3"));
    }

    #[test]
    fn switchover_checks_its_target() {
        let now = Instant::now();
        let healthy = [
            ("geo-1", up(primary(100))),
            ("geo-2", up(replica(100, true))),
            ("geo-3", up(replica(10, false))),
        ];
        let mut case = Case::new(status("geo-1", None), &healthy, now);
        case.spec.primary = Some("geo-2".into());
        let Plan::Begin(t) = case.plan() else {
            panic!("{:?}", case.plan())
        };
        assert_eq!(t.kind, FailoverKind::Switchover);
        case.spec.primary = Some("geo-3".into());
        assert!(matches!(
            case.plan(),
            Plan::RejectSwitchover {
                reason: Reason::SwitchoverTargetNotStreaming,
                ..
            }
        ));
        case.spec.primary = Some("geo-7".into());
        assert!(matches!(
            case.plan(),
            Plan::RejectSwitchover {
                reason: Reason::SwitchoverTargetMissing,
                ..
            }
        ));
        case.spec.primary = Some("geo-1".into());
        assert_eq!(
            case.plan(),
            Plan::Acknowledge {
                request: Some("geo-1".into())
            }
        );
        // A request already handled is not acted on again (after a later failover).
        case.status.handled_primary_request = Some("geo-1".into());
        assert_eq!(case.plan(), Plan::Steady);
    }

    #[test]
    fn synchronous_mode_waits_for_every_replica() {
        let now = Instant::now();
        let mut case = Case::new(
            status("geo-1", None),
            &[
                ("geo-1", down(now, 30, true, Some(primary(100)))),
                ("geo-2", up(replica(100, false))),
                ("geo-3", down(now, 30, false, None)),
            ],
            now,
        );
        case.spec.replication.synchronous = true;
        let Plan::Refuse { reason, message } = case.plan() else {
            panic!("{:?}", case.plan())
        };
        assert_eq!(reason, Reason::SynchronousReplicaUnreachable);
        assert!(message.contains("geo-3"), "{message}");
        // Once it answers, the most advanced of all is promoted.
        case.health
            .instances
            .insert("geo-3".into(), up(replica(150, false)));
        let Plan::Begin(t) = case.plan() else {
            panic!("{:?}", case.plan())
        };
        assert_eq!(t.to, "geo-3");
        // A human may accept the risk.
        case.health
            .instances
            .insert("geo-3".into(), down(now, 30, false, None));
        case.spec.replication.force_failover = true;
        assert!(matches!(case.plan(), Plan::Begin(_)));
        // Asynchronous mode promotes the best reachable one.
        case.spec.replication.force_failover = false;
        case.spec.replication.synchronous = false;
        assert!(matches!(case.plan(), Plan::Begin(_)));
    }

    #[test]
    fn synchronous_mode_does_not_pass_over_a_lost_target() {
        let now = Instant::now();
        let mut case = Case::new(
            status("geo-1", Some("geo-2")),
            &[
                ("geo-1", down(now, 30, true, Some(primary(100)))),
                ("geo-2", down(now, 30, true, None)),
                ("geo-3", up(replica(100, false))),
            ],
            now,
        );
        case.spec.replication.synchronous = true;
        assert!(matches!(
            case.plan(),
            Plan::Refuse {
                reason: Reason::SynchronousReplicaUnreachable,
                ..
            }
        ));
    }

    #[test]
    fn switchover_refuses_a_lagging_target() {
        let now = Instant::now();
        let mut case = Case::new(
            status("geo-1", None),
            &[
                ("geo-1", up(primary(100_000_000))),
                ("geo-2", up(replica(10, true))),
            ],
            now,
        );
        case.spec.primary = Some("geo-2".into());
        assert!(matches!(
            case.plan(),
            Plan::RejectSwitchover {
                reason: Reason::SwitchoverTargetLagging,
                ..
            }
        ));
    }
}
