//! Failover and switchover. `plan` decides from the status, the pods and the measured
//! health (pure); `execute` carries the decision out.
//!
//! The order keeps one writable instance at most:
//! 1. `status.targetPrimary` is written first (with a resourceVersion precondition). Every
//!    instance reads it before starting PostgreSQL and while it runs, so from then on the
//!    old primary stops (or stays down) and comes back only as a replica.
//! 2. The old primary leaves the `-rw` Service (its role label changes) at once.
//! 3. The target is promoted only once the old primary is seen fenced: in recovery, gone,
//!    refusing connections, or unreachable for `failoverDelaySeconds` (by then it has
//!    fenced itself: see `instance::Desired::fence_after`).
//! 4. `status.currentPrimary` follows once the target runs as a primary.
//!
//! A restarted operator finds `targetPrimary != currentPrimary` and resumes at step 3; the
//! choice is never made twice for one failure.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::health::{self, format_lsn, ClusterHealth};
use super::Context;
use crate::api::{FailoverKind, FailoverRecord, GeoDatabase, GeoDatabaseSpec, GeoDatabaseStatus};
use crate::error::{Error, Result};
use crate::metrics::TransitionLabels;

/// A refusal to answer connections must last this long before the instance counts as
/// down: it covers a PostgreSQL that was just being started when the target was written.
const REFUSAL_CONFIRMED: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodState {
    pub terminating: bool,
    pub ready: bool,
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
        reason: &'static str,
        message: String,
    },
    /// `spec.primary` asks for a switchover that is refused; final for that request.
    RejectSwitchover {
        request: String,
        reason: &'static str,
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
            _ => Some(Duration::from_millis(300)),
        }
    }
}

fn delay(spec: &GeoDatabaseSpec) -> Duration {
    Duration::from_secs(u64::try_from(spec.replication.failover_delay_seconds).unwrap_or(5))
}

/// The old primary cannot accept writes any more.
fn fenced(v: &View<'_>, old: &str) -> bool {
    let Some(pod) = v.pods.get(old) else {
        return true;
    };
    match v.health.get(old) {
        None => false,
        Some(h) if h.reachable => h.sample.as_ref().is_some_and(|s| s.in_recovery),
        Some(h) => {
            let failing = h.failing_for(v.now);
            pod.terminating
                || (h.refused && failing >= REFUSAL_CONFIRMED)
                || failing >= delay(v.spec)
        }
    }
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
    let Some((to, lsn)) = best else {
        return Err(Plan::Refuse {
            reason: "NoCandidate",
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
                reason: "ReplicasLagging",
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

fn check_switchover(v: &View<'_>, current: &str, request: &str) -> Result<Transition, Plan> {
    let reject = |reason: &'static str, message: String| Plan::RejectSwitchover {
        request: request.to_owned(),
        reason,
        message: format!("switchover to {request} refused: {message}; nothing was changed"),
    };
    if !v.instances.iter().any(|i| i == request) {
        return Err(reject(
            "SwitchoverTargetMissing",
            format!(
                "it is not an instance of this GeoDatabase (instances: {})",
                v.instances.join(", ")
            ),
        ));
    }
    let Some(primary) = v.health.sample(current).filter(|s| !s.in_recovery) else {
        return Err(reject(
            "PrimaryUnavailable",
            format!("the primary {current} is not available; a failover handles that"),
        ));
    };
    if !v
        .pods
        .get(request)
        .is_some_and(|p| p.ready && !p.terminating)
    {
        return Err(reject(
            "SwitchoverTargetNotReady",
            "its pod is not ready".to_owned(),
        ));
    }
    let Some(target) = v
        .health
        .sample(request)
        .filter(|s| s.in_recovery && s.receiving)
    else {
        return Err(reject(
            "SwitchoverTargetNotStreaming",
            "it is not streaming from the primary".to_owned(),
        ));
    };
    let lag = health::lag_bytes(Some(primary), target).unwrap_or(0);
    if lag > v.spec.replication.max_lag_bytes {
        return Err(reject(
            "SwitchoverTargetLagging",
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

pub fn plan(v: &View<'_>) -> Plan {
    let Some(current) = v.status.current_primary.as_deref() else {
        return Plan::Steady;
    };
    let target = v.status.target_primary.as_deref().unwrap_or(current);
    let delay = delay(v.spec);

    if target != current {
        if let Some(s) = v.health.sample(target) {
            if !s.in_recovery {
                return Plan::Complete {
                    to: target.to_owned(),
                    timeline: s.timeline,
                };
            }
        }
        // The chosen replica failed before it was promoted: it never became a primary,
        // so choosing another is safe.
        let target_lost = v.pods.get(target).is_none_or(|p| p.terminating)
            || v.health
                .get(target)
                .is_some_and(|h| !h.reachable && h.failing_for(v.now) >= delay);
        if target_lost {
            return match choose(
                v,
                current,
                &[target],
                format!("{target} failed before it was promoted"),
            ) {
                Ok(transition) => Plan::Begin(transition),
                Err(refusal) => refusal,
            };
        }
        if !fenced(v, current) {
            return Plan::AwaitFence {
                old: current.to_owned(),
                message: format!(
                    "waiting for {current} to stop accepting writes before promoting {target}"
                ),
            };
        }
        return Plan::Promote {
            to: target.to_owned(),
        };
    }

    let primary_pod = v.pods.get(current);
    let terminating = primary_pod.is_some_and(|p| p.terminating);
    let failing_for = v
        .health
        .get(current)
        .filter(|h| !h.reachable)
        .map(|h| h.failing_for(v.now));
    let can_fail_over = v.bootstrapped && v.instances.len() > 1;
    if can_fail_over && (terminating || failing_for.is_some()) {
        let failing_for = failing_for.unwrap_or_default();
        if !terminating && failing_for < delay {
            return Plan::Watch {
                message: format!(
                    "the primary {current} has failed probes for {:.1}s ({}); failover after {}s",
                    failing_for.as_secs_f64(),
                    describe_failure(v, current),
                    delay.as_secs()
                ),
            };
        }
        if !terminating {
            let still_streaming: Vec<&str> = v
                .instances
                .iter()
                .filter(|name| *name != current)
                .filter(|name| {
                    v.health.sample(name).is_some_and(|s| {
                        s.receiving
                            && s.last_message_age
                                .is_some_and(|age| age < delay.as_secs_f64())
                    })
                })
                .map(String::as_str)
                .collect();
            if !still_streaming.is_empty() {
                return Plan::Refuse {
                    reason: "ReplicasStillStreaming",
                    message: format!(
                        "the operator cannot reach the primary {current} ({}) but {} still stream from it: not failing over a primary that is alive",
                        describe_failure(v, current),
                        still_streaming.join(", ")
                    ),
                };
            }
        }
        let reason = if terminating {
            format!("the primary's pod of {current} is being deleted")
        } else {
            format!(
                "the primary {current} failed probes for {:.1}s: {}",
                failing_for.as_secs_f64(),
                describe_failure(v, current)
            )
        };
        return match choose(v, current, &[], reason) {
            Ok(transition) => Plan::Begin(transition),
            Err(refusal) => refusal,
        };
    }

    if v.spec.primary != v.status.handled_primary_request {
        return match v.spec.primary.as_deref() {
            Some(request) if request != current => match check_switchover(v, current, request) {
                Ok(transition) => Plan::Begin(transition),
                Err(rejection) => rejection,
            },
            _ => Plan::Acknowledge {
                request: v.spec.primary.clone(),
            },
        };
    }
    Plan::Steady
}

/// The `PrimaryTransition` condition a plan leads to: (status, reason, message).
pub type TransitionCondition = (bool, &'static str, String);

/// Carry out `plan`. Status fields it commits are written at once (with a
/// resourceVersion precondition) and mirrored into `db`, so the rest of the reconcile
/// sees them.
pub async fn execute(
    ctx: &Context,
    db: &mut GeoDatabase,
    plan: &Plan,
    health: &ClusterHealth,
    superuser_password: &str,
) -> Result<Option<TransitionCondition>> {
    let status = db.status.clone().unwrap_or_default();
    match plan {
        Plan::Steady => Ok(None),
        Plan::Watch { message } => Ok(Some((true, "PrimaryFailing", message.clone()))),
        Plan::AwaitFence { message, .. } => Ok(Some((true, "Fencing", message.clone()))),
        Plan::Acknowledge { request } => {
            commit(ctx, db, json!({"handledPrimaryRequest": request})).await?;
            Ok(None)
        }
        Plan::RejectSwitchover {
            request,
            reason,
            message,
        } => {
            commit(ctx, db, json!({"handledPrimaryRequest": request})).await?;
            warn!(%message, "switchover refused");
            ctx.metrics.record_action("switchover_refused");
            ctx.event(db, EventType::Warning, reason, message.clone())
                .await;
            Ok(Some((false, reason, message.clone())))
        }
        Plan::Refuse { reason, message } => {
            // One Event per refusal reason and message, not one per retry.
            let was = db
                .status
                .as_ref()
                .and_then(|s| {
                    s.conditions
                        .iter()
                        .find(|c| c.type_ == super::status::PRIMARY_TRANSITION)
                })
                .map(|c| (c.reason.clone(), c.message.clone()));
            if was.as_ref().map(|(r, _)| r.as_str()) != Some(*reason) {
                warn!(%message, "failover refused");
                let labels = transition_labels(db, FailoverKind::Failover);
                ctx.metrics.promotions_refused.get_or_create(&labels).inc();
                ctx.event(db, EventType::Warning, "FailoverRefused", message.clone())
                    .await;
            }
            Ok(Some((true, reason, message.clone())))
        }
        Plan::Begin(t) => {
            let record = FailoverRecord {
                kind: t.kind,
                from: t.from.clone(),
                to: t.to.clone(),
                reason: t.reason.clone(),
                started_at: super::status::now().0.to_string(),
                completed_at: None,
                old_primary_lsn: t.old_lsn.map(format_lsn),
                promoted_lsn: t.promoted_lsn.map(format_lsn),
                lost_bytes: match (t.kind, t.old_lsn, t.promoted_lsn) {
                    (FailoverKind::Failover, Some(old), Some(new)) => {
                        Some(i64::try_from(old.saturating_sub(new)).unwrap_or(i64::MAX))
                    }
                    _ => None,
                },
                timeline: None,
            };
            let mut fields = json!({
                "targetPrimary": t.to,
                "lastFailover": record,
                "failovers": status.failovers.saturating_add(1),
            });
            if t.kind == FailoverKind::Switchover {
                fields["handledPrimaryRequest"] = json!(t.to);
            }
            commit(ctx, db, fields).await?;
            if failpoint("exit-after-failover-begin") {
                // For the drill that kills the operator in the middle of a failover.
                warn!("failpoint exit-after-failover-begin: exiting");
                std::process::exit(1);
            }
            let kind = kind_word(t.kind);
            let message = format!(
                "{kind} from {} to {} started: {}{}",
                t.from,
                t.to,
                t.reason,
                record
                    .lost_bytes
                    .filter(|lost| *lost > 0)
                    .map(|lost| format!("; up to {lost} bytes of WAL not received by {}", t.to))
                    .unwrap_or_default()
            );
            info!(from = %t.from, to = %t.to, reason = %t.reason, "{kind} started");
            ctx.metrics.record_action(&format!("{kind}_started"));
            ctx.event(
                db,
                EventType::Warning,
                &format!("{}Started", capitalized(kind)),
                message.clone(),
            )
            .await;
            Ok(Some((true, "Switching", message)))
        }
        Plan::Promote { to } => {
            let address = health
                .get(to)
                .map(|h| h.address.clone())
                .unwrap_or_default();
            promote(&address, superuser_password, to).await?;
            info!(instance = %to, "promoted");
            ctx.event(db, EventType::Normal, "Promoted", format!("promoted {to}"))
                .await;
            Ok(Some((true, "Switching", format!("promoting {to}"))))
        }
        Plan::Complete { to, timeline } => {
            let mut record = status.last_failover.clone();
            let mut took = None;
            if let Some(record) = record.as_mut() {
                let finished = super::status::now().0;
                record.completed_at = Some(finished.to_string());
                record.timeline = *timeline;
                took = record
                    .started_at
                    .parse::<k8s_openapi::jiff::Timestamp>()
                    .ok()
                    .map(|started| finished.duration_since(started).as_secs_f64());
            }
            commit(
                ctx,
                db,
                json!({"currentPrimary": to, "timeline": timeline, "lastFailover": record}),
            )
            .await?;
            let kind = record
                .as_ref()
                .map(|r| r.kind)
                .unwrap_or(FailoverKind::Failover);
            ctx.metrics
                .transitions
                .get_or_create(&transition_labels(db, kind))
                .inc();
            if let Some(seconds) = took {
                ctx.metrics.transition_duration.observe(seconds);
            }
            let message = format!(
                "{to} is the primary{}{}",
                timeline
                    .map(|t| format!(" on timeline {t}"))
                    .unwrap_or_default(),
                took.map(|s| format!(" ({} took {s:.1}s)", kind_word(kind)))
                    .unwrap_or_default()
            );
            info!(primary = %to, ?timeline, "{} completed", kind_word(kind));
            ctx.event(
                db,
                EventType::Normal,
                &format!("{}Completed", capitalized(kind_word(kind))),
                message.clone(),
            )
            .await;
            Ok(Some((false, "Completed", message)))
        }
    }
}

/// A fault injected on purpose by the e2e drills (`GEODB_FAILPOINT`).
fn failpoint(name: &str) -> bool {
    std::env::var("GEODB_FAILPOINT").is_ok_and(|value| value == name)
}

fn kind_word(kind: FailoverKind) -> &'static str {
    match kind {
        FailoverKind::Failover => "failover",
        FailoverKind::Switchover => "switchover",
    }
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

fn transition_labels(db: &GeoDatabase, kind: FailoverKind) -> TransitionLabels {
    TransitionLabels {
        namespace: db.namespace().unwrap_or_default(),
        cluster: db.name_any(),
        kind: kind_word(kind).to_owned(),
    }
}

/// Merge `fields` into the status, failing on a concurrent change.
async fn commit(ctx: &Context, db: &mut GeoDatabase, fields: serde_json::Value) -> Result<()> {
    let namespace = db.namespace().ok_or(Error::MissingObjectKey)?;
    let api: Api<GeoDatabase> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = json!({
        "metadata": {"resourceVersion": db.resource_version()},
        "status": fields,
    });
    let updated = api
        .patch_status(
            &db.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(Error::kube("recording the primary in status"))?;
    db.status = updated.status;
    db.metadata.resource_version = updated.metadata.resource_version;
    Ok(())
}

/// `pg_promote` on the target; a target that is no longer in recovery is done already.
async fn promote(address: &str, password: &str, instance: &str) -> Result<()> {
    let failed = |detail: String| Error::Postgres {
        instance: instance.to_owned(),
        action: "promoting",
        detail,
    };
    if address.is_empty() {
        return Err(failed("no running pod".into()));
    }
    let client = health::connect(address, password).await.map_err(failed)?;
    let promoting = client.query_one("SELECT pg_promote(true, 30)", &[]);
    match tokio::time::timeout(Duration::from_secs(35), promoting).await {
        Ok(Ok(row)) if row.try_get::<_, bool>(0).unwrap_or(false) => Ok(()),
        Ok(Ok(_)) => Err(failed("pg_promote returned false".into())),
        Ok(Err(error)) if error.to_string().contains("recovery is not in progress") => Ok(()),
        Ok(Err(error)) => Err(failed(error.to_string())),
        Err(_) => Err(failed("pg_promote timed out".into())),
    }
}

/// Create the replication slots of every replica on the primary; drop those of
/// instances that are gone. Slots of live instances are never dropped.
pub async fn converge_slots(
    address: &str,
    password: &str,
    primary: &str,
    wanted: &[String],
    existing: &[String],
) -> Result<Vec<String>> {
    let create: Vec<&String> = wanted.iter().filter(|s| !existing.contains(s)).collect();
    let drop: Vec<&String> = existing.iter().filter(|s| !wanted.contains(s)).collect();
    if create.is_empty() && drop.is_empty() {
        return Ok(Vec::new());
    }
    let failed = |detail: String| Error::Postgres {
        instance: primary.to_owned(),
        action: "managing replication slots",
        detail,
    };
    let client = health::connect(address, password).await.map_err(failed)?;
    let mut changed = Vec::new();
    for slot in create {
        client
            .execute(
                "SELECT pg_create_physical_replication_slot($1, true) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                &[slot],
            )
            .await
            .map_err(|e| failed(e.to_string()))?;
        changed.push(format!("created {slot}"));
    }
    for slot in drop {
        // An active slot belongs to a replica still streaming: left for the next pass.
        let dropped = client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                &[slot],
            )
            .await
            .map_err(|e| failed(e.to_string()))?;
        if dropped > 0 {
            changed.push(format!("dropped {slot}"));
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::health::{InstanceHealth, Sample};

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
        spec: GeoDatabaseSpec,
        status: GeoDatabaseStatus,
        pods: BTreeMap<String, PodState>,
        health: ClusterHealth,
        now: Instant,
    }

    impl Case {
        fn new(status: GeoDatabaseStatus, health: &[(&str, InstanceHealth)], now: Instant) -> Self {
            Self {
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
                reason: "ReplicasStillStreaming",
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
                reason: "ReplicasLagging",
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
                reason: "NoCandidate",
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
                reason: "SwitchoverTargetNotStreaming",
                ..
            }
        ));
        case.spec.primary = Some("geo-7".into());
        assert!(matches!(
            case.plan(),
            Plan::RejectSwitchover {
                reason: "SwitchoverTargetMissing",
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
                reason: "SwitchoverTargetLagging",
                ..
            }
        ));
    }
}
