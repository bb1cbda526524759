//! Status step: conditions, phase and instance roles, written only when they change.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::failover::TransitionCondition;
use super::health::{self, format_lsn, ClusterHealth};
use super::read::Observed;
use crate::api::{
    GeoDatabase, GeoDatabaseStatus, InstanceStatus, Phase, Role, SecretNames, ServiceNames,
};
use crate::builders::config::BOOTSTRAPPED_KEY;
use crate::builders::Cluster;
use crate::error::{Error, Result};
use crate::names::{Names, FIELD_MANAGER};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
/// Failovers and switchovers: True while one is under way or refused.
pub const PRIMARY_TRANSITION: &str = "PrimaryTransition";

pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
        .unwrap_or(false)
}

fn deployment_ready(deployment: Option<&Deployment>, wanted: i32) -> bool {
    deployment
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
        >= wanted
}

/// A condition; `last_transition_time` is kept from `previous` when the status did not flip.
fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// The first primary has run: recorded in the instance ConfigMap, or seen now.
pub fn bootstrapped(cluster: &Cluster, observed: &Observed) -> bool {
    let recorded = observed
        .config_maps
        .iter()
        .find(|c| c.name_any() == cluster.names.config_map())
        .and_then(|c| c.data.as_ref()?.get(BOOTSTRAPPED_KEY).cloned())
        .is_some_and(|v| v == "true");
    recorded
        || observed
            .pod(&Names::pod(&cluster.primary))
            .is_some_and(pod_ready)
}

/// Status of a cluster whose spec was applied.
pub fn converged_status(
    db: &GeoDatabase,
    cluster: &Cluster,
    observed: &Observed,
    health: &ClusterHealth,
    transition: Option<TransitionCondition>,
    now: &Time,
) -> GeoDatabaseStatus {
    let kept = db.status.clone().unwrap_or_default();
    let current_primary = kept
        .current_primary
        .clone()
        .unwrap_or_else(|| cluster.primary.clone());
    let target_primary = kept
        .target_primary
        .clone()
        .unwrap_or_else(|| current_primary.clone());
    let confirmed = current_primary == target_primary;
    let primary_sample = health.sample(&current_primary).filter(|s| !s.in_recovery);
    let previous = db
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = db.metadata.generation;
    let names = &cluster.names;
    let instances: Vec<InstanceStatus> = cluster
        .instances
        .iter()
        .map(|instance| {
            let pod = observed.pod(&Names::pod(instance));
            let is_primary = confirmed && *instance == current_primary;
            let sample = health.sample(instance);
            let replica = sample.filter(|s| s.in_recovery);
            InstanceStatus {
                name: instance.clone(),
                role: if is_primary {
                    Role::Primary
                } else {
                    Role::Replica
                },
                pod: pod.map(|p| p.name_any()),
                ready: pod.map(pod_ready).unwrap_or(false),
                reachable: sample.is_some(),
                streaming: replica.map(|s| s.receiving),
                serving_reads: (!is_primary).then(|| {
                    replica.is_some_and(|s| {
                        health::serves_reads(
                            primary_sample,
                            s,
                            cluster.spec.replication.max_lag_bytes,
                        )
                    })
                }),
                timeline: sample.and_then(|s| s.timeline),
                received_lsn: sample.and_then(|s| s.lsn).map(format_lsn),
                replayed_lsn: replica.and_then(|s| s.replayed_lsn).map(format_lsn),
                lag_bytes: replica.and_then(|s| health::lag_bytes(primary_sample, s)),
                lag_seconds: replica.map(|s| {
                    let pending = health::lag_bytes(primary_sample, s).unwrap_or(0) > 0;
                    if pending {
                        (s.replay_age.unwrap_or(0.0) * 10.0).round() / 10.0
                    } else {
                        0.0
                    }
                }),
            }
        })
        .collect();
    let ready_instances = instances.iter().filter(|i| i.ready).count() as i32;
    let wanted = instances.len() as i32;
    let pooler_ok = !cluster.spec.pooler.enabled
        || [names.pooler(), names.pooler_ro()].iter().all(|pooler| {
            deployment_ready(
                observed
                    .deployments
                    .iter()
                    .find(|d| d.name_any() == *pooler),
                cluster.spec.pooler.instances,
            )
        });
    let switching = transition.as_ref().is_some_and(|(active, _, _)| *active);
    let all_ready = ready_instances == wanted && pooler_ok && !switching;
    let transition_condition = match transition {
        Some((active, reason, message)) => condition(
            previous,
            PRIMARY_TRANSITION,
            active,
            reason,
            message,
            generation,
            now,
        ),
        None => previous
            .iter()
            .find(|c| c.type_ == PRIMARY_TRANSITION && c.status == "False")
            .cloned()
            .unwrap_or_else(|| {
                condition(
                    previous,
                    PRIMARY_TRANSITION,
                    false,
                    "Stable",
                    format!("{current_primary} is the primary"),
                    generation,
                    now,
                )
            }),
    };
    let summary = format!(
        "{ready_instances}/{wanted} instances ready{}",
        if cluster.spec.pooler.enabled {
            if pooler_ok {
                ", pooler ready"
            } else {
                ", pooler not ready"
            }
        } else {
            ""
        }
    );
    let conditions = vec![
        condition(
            previous,
            READY,
            all_ready,
            if all_ready { "AllReady" } else { "NotReady" },
            summary.clone(),
            generation,
            now,
        ),
        condition(
            previous,
            PROGRESSING,
            !all_ready,
            if all_ready {
                "Converged"
            } else {
                "Reconciling"
            },
            if all_ready {
                "every object matches the spec".to_owned()
            } else {
                format!("waiting: {summary}")
            },
            generation,
            now,
        ),
        condition(
            previous,
            DEGRADED,
            false,
            "AsExpected",
            "the spec is valid and applied".to_owned(),
            generation,
            now,
        ),
        transition_condition,
    ];
    GeoDatabaseStatus {
        phase: Some(if all_ready {
            Phase::Ready
        } else if switching {
            Phase::Degraded
        } else {
            Phase::Creating
        }),
        conditions,
        observed_generation: generation,
        timeline: primary_sample
            .and_then(|s| s.timeline)
            .filter(|_| confirmed)
            .or(kept.timeline),
        target_primary: Some(target_primary.clone()),
        current_primary: Some(current_primary.clone()),
        last_failover: kept.last_failover.clone(),
        failovers: kept.failovers,
        handled_primary_request: kept.handled_primary_request.clone(),
        ready_instances,
        instances,
        secrets: Some(SecretNames {
            superuser: names.superuser_secret(),
            replication: names.replication_secret(),
            app: names.app_secret(),
            app_rw: names.app_rw_secret(),
            app_ro: names.app_ro_secret(),
            app_pooler: cluster
                .spec
                .pooler
                .enabled
                .then(|| names.app_pooler_secret()),
            app_pooler_ro: cluster
                .spec
                .pooler
                .enabled
                .then(|| names.app_pooler_ro_secret()),
        }),
        services: Some(ServiceNames {
            rw: names.rw_service(),
            ro: names.ro_service(),
            pooler: cluster.spec.pooler.enabled.then(|| names.pooler()),
            pooler_ro: cluster.spec.pooler.enabled.then(|| names.pooler_ro()),
        }),
    }
}

/// Status of a GeoDatabase whose spec cannot be applied: Degraded, with the problems,
/// and everything else as it was (nothing was changed).
pub fn invalid_status(db: &GeoDatabase, problems: &[String], now: &Time) -> GeoDatabaseStatus {
    let mut status = db.status.clone().unwrap_or_default();
    let previous = status.conditions.clone();
    let generation = db.metadata.generation;
    let message = format!("spec not applied: {}", problems.join("; "));
    status.phase = Some(Phase::Degraded);
    status.observed_generation = generation;
    let ready = previous
        .iter()
        .find(|c| c.type_ == READY)
        .map(|c| c.status == "True")
        .unwrap_or(false);
    status.conditions = vec![
        condition(
            &previous,
            READY,
            ready,
            if ready { "AllReady" } else { "NotReady" },
            previous
                .iter()
                .find(|c| c.type_ == READY)
                .map(|c| c.message.clone())
                .unwrap_or_else(|| "nothing has been created".to_owned()),
            generation,
            now,
        ),
        condition(
            &previous,
            PROGRESSING,
            false,
            "InvalidSpec",
            "waiting for a valid spec".to_owned(),
            generation,
            now,
        ),
        condition(
            &previous,
            DEGRADED,
            true,
            "InvalidSpec",
            message,
            generation,
            now,
        ),
    ];
    status
}

pub fn deleting_status(db: &GeoDatabase) -> GeoDatabaseStatus {
    let mut status = db.status.clone().unwrap_or_default();
    status.phase = Some(Phase::Deleting);
    status
}

/// Write `status` unless it equals what is stored. Returns whether it wrote.
pub async fn write(client: &Client, db: &GeoDatabase, status: &GeoDatabaseStatus) -> Result<bool> {
    if db.status.as_ref() == Some(status) {
        return Ok(false);
    }
    let namespace = db.namespace().ok_or(Error::MissingObjectKey)?;
    let api: Api<GeoDatabase> = Api::namespaced(client.clone(), &namespace);
    // The resourceVersion makes a status computed from a stale view fail instead of
    // overwriting what a newer reconcile wrote; the reconcile is retried at once.
    let patch = json!({
        "apiVersion": "geodb.io/v1alpha1",
        "kind": "GeoDatabase",
        "metadata": {"resourceVersion": db.resource_version()},
        "status": status,
    });
    match api
        .patch_status(
            &db.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(response)) if response.code == 409 => Err(Error::StaleView),
        Err(source) => Err(Error::Kube {
            action: "writing status",
            source,
        }),
    }
}

pub fn now() -> Time {
    Time(Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::{cluster, geodatabase};
    use serde_json::json;

    /// The converged status of `db` with nothing observed and no probe yet, at `seconds`.
    fn status_of_fresh(
        db: &GeoDatabase,
        spec: serde_json::Value,
        seconds: i64,
    ) -> GeoDatabaseStatus {
        converged_status(
            db,
            &cluster(spec),
            &Observed::default(),
            &ClusterHealth::default(),
            None,
            &at(seconds),
        )
    }

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn fresh_cluster_is_creating() {
        let spec = json!({"instances": 2, "storage": {"size": "1Gi"}});
        let db = geodatabase(spec.clone());
        let status = status_of_fresh(&db, spec, 10);
        assert_eq!(status.phase, Some(Phase::Creating));
        assert_eq!(status.current_primary.as_deref(), Some("geo-1"));
        assert_eq!(status.instances.len(), 2);
        assert_eq!(status.instances[1].role, Role::Replica);
        assert_eq!(status.observed_generation, Some(1));
        let ready = status.conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.message, "0/2 instances ready, pooler not ready");
    }

    #[test]
    fn transition_time_is_kept_while_status_holds() {
        let spec = json!({"storage": {"size": "1Gi"}});
        let mut db = geodatabase(spec.clone());
        let first = status_of_fresh(&db, spec.clone(), 10);
        db.status = Some(first.clone());
        let second = status_of_fresh(&db, spec, 20);
        assert_eq!(first, second);
    }

    #[test]
    fn invalid_spec_is_degraded_and_keeps_primary() {
        let spec = json!({"storage": {"size": "1Gi"}});
        let mut db = geodatabase(spec.clone());
        db.status = Some(status_of_fresh(&db, spec, 10));
        let status = invalid_status(&db, &["bad thing".to_owned()], &at(20));
        assert_eq!(status.phase, Some(Phase::Degraded));
        assert_eq!(status.current_primary.as_deref(), Some("geo-1"));
        let degraded = status
            .conditions
            .iter()
            .find(|c| c.type_ == DEGRADED)
            .unwrap();
        assert_eq!(degraded.status, "True");
        assert_eq!(degraded.reason, "InvalidSpec");
        assert!(degraded.message.contains("bad thing"));
        assert_eq!(degraded.last_transition_time, at(20));
    }
}
