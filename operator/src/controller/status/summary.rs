//! The status as a whole: phase, conditions, and the names of what the cluster offers.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use super::conditions::{condition, Reason, TransitionState, Type};
use super::instances::statuses;
use crate::api::{BackupsStatus, GeoDatabase, GeoDatabaseStatus, Phase, SecretNames, ServiceNames};
use crate::builders::Cluster;
use crate::controller::read::Observed;
use crate::controller::rollout::Rollout;
use crate::controller::topology::{current_primary, primary_confirmed, InstanceRole};
use crate::names::Names;
use crate::pod_contract::REFUSED_PREFIX;
use crate::postgres::probe::{ClusterHealth, Sample};

/// Everything the status of an applied spec is computed from.
pub struct Converged<'a> {
    pub db: &'a GeoDatabase,
    pub cluster: &'a Cluster,
    pub observed: &'a Observed,
    pub health: &'a ClusterHealth,
    pub roles: &'a BTreeMap<String, InstanceRole>,
    pub transition: Option<TransitionState>,
    pub rollout: &'a Rollout,
    /// What the backup bucket holds, when `spec.backup` is set.
    pub backups: Option<BackupsStatus>,
    /// Extensions, migrations and maintenance.
    pub chores: super::Chores,
    pub now: &'a Time,
}

fn deployment_ready(deployment: Option<&Deployment>, wanted: i32) -> bool {
    deployment
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
        >= wanted
}

fn poolers_ready(cluster: &Cluster, observed: &Observed) -> bool {
    let names = &cluster.names;
    !cluster.spec.pooler.enabled
        || [names.pooler(), names.pooler_ro()].iter().all(|pooler| {
            deployment_ready(
                observed
                    .owned
                    .deployments
                    .iter()
                    .find(|d| d.name_any() == *pooler),
                cluster.spec.pooler.instances,
            )
        })
}

/// The `PrimaryTransition` condition: the transition step's say, else the last completed
/// one as it was, else `Stable`.
fn transition_condition(
    previous: &[Condition],
    transition: Option<TransitionState>,
    current_primary: &str,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let type_ = Type::PrimaryTransition;
    match transition {
        Some(t) => condition(
            previous, type_, t.active, t.reason, t.message, generation, now,
        ),
        None => previous
            .iter()
            .find(|c| c.type_ == type_.as_str() && c.status == "False")
            .cloned()
            .unwrap_or_else(|| {
                let message = format!("{current_primary} is the primary");
                condition(
                    previous,
                    type_,
                    false,
                    Reason::Stable,
                    message,
                    generation,
                    now,
                )
            }),
    }
}

/// The `KeptData` condition: which volumes keep a data directory set aside (from the
/// last probe of each instance).
fn kept_data_condition(
    previous: &[Condition],
    instances: &[String],
    health: &ClusterHealth,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let kept: Vec<String> = instances
        .iter()
        .filter_map(|instance| {
            let sample = health.get(instance)?.sample.as_ref()?;
            (!sample.kept_data.is_empty())
                .then(|| format!("{instance} keeps {}", sample.kept_data.join(", ")))
        })
        .collect();
    let (status, reason, message) = if kept.is_empty() {
        (
            false,
            Reason::NoKeptData,
            "no volume keeps a former data directory".to_owned(),
        )
    } else {
        (true, Reason::DataKept, format!(
            "{} beside its data directory on its volume: set aside when the instance could not follow the primary (a failed pg_rewind, or WAL the primary no longer keeps), not used, never removed by geodb; see docs/runbooks/kept-data.md",
            kept.join("; ")
        ))
    };
    condition(
        previous,
        Type::KeptData,
        status,
        reason,
        message,
        generation,
        now,
    )
}

/// Ready, Progressing and Degraded of a cluster whose spec is applied; `rolling` says
/// what a rollout under way does.
fn readiness_conditions(
    previous: &[Condition],
    all_ready: bool,
    summary: &str,
    rolling: Option<String>,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let (ready_reason, progress_reason, progress) = match (all_ready, rolling) {
        (_, Some(rolling)) => (Reason::NotReady, Reason::RollingUpdate, rolling),
        (true, None) => (
            Reason::AllReady,
            Reason::Converged,
            "every object matches the spec".to_owned(),
        ),
        (false, None) => (
            Reason::NotReady,
            Reason::Reconciling,
            format!("waiting: {summary}"),
        ),
    };
    vec![
        condition(
            previous,
            Type::Ready,
            all_ready,
            ready_reason,
            summary.to_owned(),
            generation,
            now,
        ),
        condition(
            previous,
            Type::Progressing,
            !all_ready,
            progress_reason,
            progress,
            generation,
            now,
        ),
    ]
}

/// What instances report that needs a human: settings PostgreSQL refuses (it keeps its
/// previous ones) and servers that refuse to start (their container's termination
/// message), each in PostgreSQL's own words.
fn instance_problems(
    cluster: &Cluster,
    observed: &Observed,
    health: &ClusterHealth,
) -> Vec<(Reason, String)> {
    let mut problems = Vec::new();
    for instance in &cluster.instances {
        if let Some(sample) = health
            .sample(instance)
            .filter(|s| !s.config_errors.is_empty())
        {
            problems.push((Reason::ConfigurationRefused, format!(
                "{instance}: PostgreSQL refuses the configuration and keeps running with its previous settings: {}",
                sample.config_errors.join("; ")
            )));
        }
        let ended = observed
            .instance_pod(instance)
            .and_then(|pod| pod.status.as_ref()?.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .filter(|c| !c.ready)
            .filter_map(|c| c.last_state.as_ref()?.terminated.as_ref()?.message.clone());
        if let Some(message) = ended.into_iter().find(|m| m.starts_with(REFUSED_PREFIX)) {
            problems.push((
                Reason::InstanceFailing,
                format!("{instance}: {}", message.trim()),
            ));
        }
        if let Some(note) = observed.parked.get(&Names::pod(instance)) {
            problems.push((Reason::InstanceParked, note.clone()));
        }
    }
    problems
}

/// Degraded: True while an instance reports a problem (see `instance_problems`).
fn degraded_condition(
    previous: &[Condition],
    problems: &[(Reason, String)],
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let Some((reason, _)) = problems.first() else {
        let message = "the spec is valid and applied".to_owned();
        return condition(
            previous,
            Type::Degraded,
            false,
            Reason::AsExpected,
            message,
            generation,
            now,
        );
    };
    let mut message: String = problems
        .iter()
        .map(|(_, m)| m.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    message.truncate(4000);
    condition(
        previous,
        Type::Degraded,
        true,
        *reason,
        message,
        generation,
        now,
    )
}

fn secret_names(cluster: &Cluster) -> SecretNames {
    let names = &cluster.names;
    let pooler = cluster.spec.pooler.enabled;
    SecretNames {
        superuser: names.superuser_secret(),
        replication: names.replication_secret(),
        app: names.app_secret(),
        app_rw: names.app_rw_secret(),
        app_ro: names.app_ro_secret(),
        app_pooler: pooler.then(|| names.app_pooler_secret()),
        app_pooler_ro: pooler.then(|| names.app_pooler_ro_secret()),
    }
}

fn service_names(names: &Names, pooler: bool) -> ServiceNames {
    ServiceNames {
        rw: names.rw_service(),
        ro: names.ro_service(),
        pooler: pooler.then(|| names.pooler()),
        pooler_ro: pooler.then(|| names.pooler_ro()),
    }
}

fn phase_of(all_ready: bool, switching: bool) -> Phase {
    match (all_ready, switching) {
        (true, _) => Phase::Ready,
        (false, true) => Phase::Degraded,
        (false, false) => Phase::Creating,
    }
}

/// Status of a cluster whose spec was applied.
pub fn converged(input: Converged<'_>) -> GeoDatabaseStatus {
    let Converged {
        db,
        cluster,
        observed,
        health,
        roles,
        transition,
        rollout,
        backups,
        chores,
        now,
    } = input;
    let kept = db.status.clone().unwrap_or_default();
    let current = current_primary(&kept, &cluster.primary);
    let confirmed = primary_confirmed(&kept, &cluster.primary);
    let instances = statuses(roles, &cluster.instances, &current, observed, health);
    let ready_instances = instances.iter().filter(|i| i.ready).count() as i32;
    let wanted = instances.len() as i32;
    let pooler_ok = poolers_ready(cluster, observed);
    let switching = transition.as_ref().is_some_and(|t| t.active);
    let rolling = rollout.describe(&current);
    let all_ready = ready_instances == wanted && pooler_ok && !switching && rolling.is_none();
    let pooler = (cluster.spec.pooler.enabled, pooler_ok);
    let summary = summary_line(ready_instances, wanted, pooler);
    let generation = db.metadata.generation;
    let previous = &kept.conditions;
    let mut conditions =
        readiness_conditions(previous, all_ready, &summary, rolling, generation, now);
    conditions.push(transition_condition(
        previous, transition, &current, generation, now,
    ));
    let problems = instance_problems(cluster, observed, health);
    conditions.push(degraded_condition(previous, &problems, generation, now));
    conditions.push(kept_data_condition(
        previous,
        &cluster.instances,
        health,
        generation,
        now,
    ));
    if cluster.spec.backup.is_some() {
        let archiver = health.sample(&current).and_then(Sample::primary);
        let archiver = archiver.map(|s| &s.archiver);
        conditions.push(super::archiving::condition_for(
            previous, archiver, generation, now,
        ));
    }
    let last_run = super::chores::conditions(
        &mut conditions,
        (previous, generation, now),
        chores.postgis.as_ref(),
        &chores.migrations,
        kept.migrations.clone(),
    );
    let phase = phase_of(all_ready, switching);
    let timeline = timeline_of(health, &current, confirmed, kept.timeline);
    GeoDatabaseStatus {
        phase: Some(phase),
        conditions,
        observed_generation: generation,
        timeline,
        target_primary: Some(
            kept.target_primary
                .clone()
                .unwrap_or_else(|| current.clone()),
        ),
        current_primary: Some(current),
        ready_instances,
        instances,
        secrets: Some(secret_names(cluster)),
        services: Some(service_names(&cluster.names, cluster.spec.pooler.enabled)),
        backups,
        postgis: chores.postgis,
        migrations: last_run,
        maintenance: chores.maintenance.or(kept.maintenance.clone()),
        seed: chores.seed.or(kept.seed.clone()),
        ..kept
    }
}

/// The primary's timeline as probed once it is confirmed, else the one recorded.
fn timeline_of(
    health: &ClusterHealth,
    current: &str,
    confirmed: bool,
    kept: Option<i64>,
) -> Option<i64> {
    health
        .sample(current)
        .and_then(Sample::primary)
        .and_then(|s| s.timeline)
        .filter(|_| confirmed)
        .or(kept)
}

/// "2/3 instances ready, pooler ready".
fn summary_line(ready: i32, wanted: i32, pooler: (bool, bool)) -> String {
    let pooler_note = match pooler {
        (false, _) => "",
        (true, true) => ", pooler ready",
        (true, false) => ", pooler not ready",
    };
    format!("{ready}/{wanted} instances ready{pooler_note}")
}

/// Status of a GeoDatabase created over volumes whose primary is not known yet: Creating,
/// `Progressing` saying what it waits for, no primary.
pub fn choosing(db: &GeoDatabase, why: &str, now: &Time) -> GeoDatabaseStatus {
    let status = db.status.clone().unwrap_or_default();
    let previous = &status.conditions;
    let generation = db.metadata.generation;
    GeoDatabaseStatus {
        phase: Some(Phase::Creating),
        observed_generation: generation,
        conditions: vec![
            condition(
                previous,
                Type::Ready,
                false,
                Reason::NotReady,
                "no primary chosen yet".to_owned(),
                generation,
                now,
            ),
            condition(
                previous,
                Type::Progressing,
                true,
                Reason::ChoosingPrimary,
                why.to_owned(),
                generation,
                now,
            ),
        ],
        target_primary: None,
        current_primary: None,
        ..status
    }
}

/// Status of a GeoDatabase whose spec cannot be applied: Degraded, with the problems,
/// and everything else as it was (nothing was changed).
pub fn invalid(db: &GeoDatabase, problems: &[String], now: &Time) -> GeoDatabaseStatus {
    let message = format!("spec not applied: {}", problems.join("; "));
    refused(db, Reason::InvalidSpec, message, now)
}

/// Status of a GeoDatabase whose spec was not (wholly) applied, for `reason`: Degraded
/// with `message`, not progressing, and everything else as it was.
pub fn refused(db: &GeoDatabase, reason: Reason, message: String, now: &Time) -> GeoDatabaseStatus {
    let mut status = db.status.clone().unwrap_or_default();
    let previous = status.conditions.clone();
    let generation = db.metadata.generation;
    status.phase = Some(Phase::Degraded);
    status.observed_generation = generation;
    let was_ready = status.condition(Type::Ready.as_str());
    let ready = was_ready.is_some_and(|c| c.status == "True");
    let ready_message = was_ready
        .map(|c| c.message.clone())
        .unwrap_or_else(|| "nothing has been created".to_owned());
    let ready_reason = if ready {
        Reason::AllReady
    } else {
        Reason::NotReady
    };
    status.conditions = vec![
        condition(
            &previous,
            Type::Ready,
            ready,
            ready_reason,
            ready_message,
            generation,
            now,
        ),
        condition(
            &previous,
            Type::Progressing,
            false,
            reason,
            match reason {
                Reason::NameConflict => "waiting for the names it needs to be free".to_owned(),
                _ => "waiting for a spec that can be applied".to_owned(),
            },
            generation,
            now,
        ),
        condition(
            &previous,
            Type::Degraded,
            true,
            reason,
            message,
            generation,
            now,
        ),
    ];
    status
}

pub fn deleting(db: &GeoDatabase) -> GeoDatabaseStatus {
    let mut status = db.status.clone().unwrap_or_default();
    status.phase = Some(Phase::Deleting);
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::{cluster, geodatabase};
    use crate::controller::status::conditions::is_true;
    use crate::controller::topology::roles;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    /// The converged status of `db` with nothing observed and no probe yet, at `seconds`.
    fn status_of_fresh(
        db: &GeoDatabase,
        spec: serde_json::Value,
        seconds: i64,
    ) -> GeoDatabaseStatus {
        let cluster = cluster(spec);
        let health = ClusterHealth::default();
        let status = db.status.clone().unwrap_or_default();
        let roles = roles(&cluster.instances, &status, &cluster.primary, &health, 0);
        converged(Converged {
            db,
            cluster: &cluster,
            observed: &Observed::default(),
            health: &health,
            roles: &roles,
            transition: None,
            rollout: &Rollout::default(),
            backups: None,
            chores: Default::default(),
            now: &at(seconds),
        })
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
        assert_eq!(status.instances[1].role, crate::api::Role::Replica);
        assert_eq!(status.observed_generation, Some(1));
        let ready = status.condition("Ready").unwrap();
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
    fn refused_settings_and_refused_starts_degrade_with_postgres_words() {
        use crate::postgres::probe::{InstanceHealth, Sample};
        use k8s_openapi::api::core::v1::{
            ContainerState, ContainerStateTerminated, ContainerStatus, Pod, PodStatus,
        };
        let c = cluster(json!({"instances": 2, "storage": {"size": "1Gi"}}));
        let health = ClusterHealth {
            instances: [(
                "geo-1".to_owned(),
                InstanceHealth {
                    reachable: true,
                    sample: Some(Sample {
                        config_errors: vec!["unrecognized configuration parameter \"wrok_mem\" in file \"x\" line 3".into()],
                        ..Sample::default()
                    }),
                    ..InstanceHealth::default()
                },
            )]
            .into(),
        };
        let mut pod = Pod::default();
        pod.metadata.name = Some("geo-2-0".into());
        pod.status = Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "postgres".into(),
                ready: false,
                last_state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        message: Some("PostgreSQL refused to start: FATAL:  superuser_reserved_connections (3) must be less than max_connections (3)".into()),
                        ..ContainerStateTerminated::default()
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        });
        let mut observed = Observed::default();
        observed.related.pods.push(pod);
        let problems = instance_problems(&c, &observed, &health);
        assert_eq!(problems.len(), 2, "{problems:?}");
        let degraded = degraded_condition(&[], &problems, None, &at(1));
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "ConfigurationRefused")
        );
        assert!(degraded.message.contains("wrok_mem"));
        assert!(degraded
            .message
            .contains("geo-2: PostgreSQL refused to start: FATAL:"));
        let fine = degraded_condition(&[], &[], None, &at(1));
        assert_eq!(
            (fine.status.as_str(), fine.reason.as_str()),
            ("False", "AsExpected")
        );
    }

    #[test]
    fn a_kept_data_directory_is_named_in_a_condition() {
        use crate::postgres::probe::{InstanceHealth, Sample};
        let health = ClusterHealth {
            instances: [(
                "geo-2".to_owned(),
                InstanceHealth {
                    sample: Some(Sample {
                        kept_data: vec!["pgdata.kept-20261201T000000Z".into()],
                        ..Sample::default()
                    }),
                    ..InstanceHealth::default()
                },
            )]
            .into(),
        };
        let instances = vec!["geo-1".to_owned(), "geo-2".to_owned()];
        let c = kept_data_condition(&[], &instances, &health, None, &at(1));
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "DataKept"));
        assert!(
            c.message
                .starts_with("geo-2 keeps pgdata.kept-20261201T000000Z"),
            "{}",
            c.message
        );
        let none = kept_data_condition(&[], &instances, &ClusterHealth::default(), None, &at(1));
        assert_eq!(none.status, "False");
    }

    #[test]
    fn invalid_spec_is_degraded_and_keeps_primary() {
        let spec = json!({"storage": {"size": "1Gi"}});
        let mut db = geodatabase(spec.clone());
        db.status = Some(status_of_fresh(&db, spec, 10));
        let status = invalid(&db, &["bad thing".to_owned()], &at(20));
        assert_eq!(status.phase, Some(Phase::Degraded));
        assert_eq!(status.current_primary.as_deref(), Some("geo-1"));
        let degraded = status.condition("Degraded").unwrap();
        assert!(is_true(Some(degraded)));
        assert_eq!(degraded.reason, "InvalidSpec");
        assert!(degraded.message.contains("bad thing"));
        assert_eq!(degraded.last_transition_time, at(20));
    }
}
