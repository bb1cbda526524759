//! The VACUUM CronJob (`spec.maintenance.vacuum`) and the run a new value of the
//! `geodb.io/vacuum-request` annotation asks for: `geodb maintain vacuum` against the
//! primary as the superuser (it may vacuum every table), through the `-rw` Service.

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::migrations::{geodb_container, job_volumes, one_shot};
use super::{content_hash, Cluster};
use crate::api::VacuumSpec;
use crate::names::{cluster_labels, COMPONENT_VACUUM, SUPERUSER};
use crate::pod_contract::Credential;

/// How long one run may take.
const DEADLINE_SECONDS: i64 = 6 * 3600;

/// `geodb maintain vacuum` with the spec's tables, lock timeout and autovacuum settings.
pub fn command(vacuum: &VacuumSpec) -> Vec<String> {
    let mut command = vec![
        "geodb".to_owned(),
        "maintain".to_owned(),
        "vacuum".to_owned(),
        format!(
            "--lock-timeout-ms={}",
            i64::from(vacuum.lock_timeout_seconds) * 1000
        ),
    ];
    command.extend(vacuum.tables.iter().map(|t| format!("--table={t}")));
    for (table, settings) in &vacuum.autovacuum {
        for (key, value) in settings {
            command.push(format!("--autovacuum={table}:{key}={value}"));
        }
    }
    command
}

fn job_spec(cluster: &Cluster, vacuum: &VacuumSpec) -> JobSpec {
    let labels = cluster_labels(&cluster.names.cluster, COMPONENT_VACUUM);
    let container = geodb_container(
        cluster,
        "vacuum",
        (SUPERUSER, Credential::Superuser),
        command(vacuum),
    );
    let volumes = job_volumes(
        cluster.names.superuser_secret(),
        Credential::Superuser,
        cluster,
    );
    // A run that failed waits for the next schedule.
    one_shot(labels, DEADLINE_SECONDS, container, volumes)
}

/// The scheduled runs, once a first primary has run.
pub fn cron_job(cluster: &Cluster) -> Option<CronJob> {
    let vacuum = cluster.spec.maintenance.vacuum.as_ref()?;
    let labels = cluster_labels(&cluster.names.cluster, COMPONENT_VACUUM);
    Some(CronJob {
        metadata: cluster.component_meta(cluster.names.vacuum_cron_job(), COMPONENT_VACUUM),
        spec: Some(CronJobSpec {
            schedule: vacuum.schedule.clone(),
            time_zone: Some("Etc/UTC".into()),
            concurrency_policy: Some("Forbid".into()),
            starting_deadline_seconds: Some(600),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(3),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(job_spec(cluster, vacuum)),
            },
            ..CronJobSpec::default()
        }),
        ..CronJob::default()
    })
}

/// The run the current value of `geodb.io/vacuum-request` asks for (kept, finished,
/// until the value changes: one value never runs twice).
pub fn requested_job(cluster: &Cluster) -> Option<Job> {
    let vacuum = cluster.spec.maintenance.vacuum.as_ref()?;
    if !cluster.bootstrapped {
        return None;
    }
    let request = cluster.vacuum_request.as_ref()?;
    let hash = content_hash(&[request.as_bytes()]);
    Some(Job {
        metadata: cluster.component_meta(
            cluster.names.requested_vacuum_job(&hash[..10]),
            COMPONENT_VACUUM,
        ),
        spec: Some(job_spec(cluster, vacuum)),
        ..Job::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::cluster;
    use serde_json::json;

    #[test]
    fn schedule_tables_and_settings_reach_the_command() {
        let mut c = cluster(
            json!({"storage": {"size": "1Gi"}, "maintenance": {"vacuum": {
            "schedule": "30 2 * * *", "tables": ["locations", "public.images"], "lockTimeoutSeconds": 3,
            "autovacuum": {"locations": {"autovacuum_vacuum_scale_factor": "0.05"}}}}}),
        );
        let cron = cron_job(&c).unwrap();
        let spec = cron.spec.unwrap();
        assert_eq!(spec.schedule, "30 2 * * *");
        assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
        let pod = spec.job_template.spec.unwrap().template.spec.unwrap();
        assert_eq!(
            pod.containers[0].command.clone().unwrap(),
            [
                "geodb",
                "maintain",
                "vacuum",
                "--lock-timeout-ms=3000",
                "--table=locations",
                "--table=public.images",
                "--autovacuum=locations:autovacuum_vacuum_scale_factor=0.05"
            ]
        );
        assert!(requested_job(&c).is_none());
        c.vacuum_request = Some("now".into());
        c.bootstrapped = true;
        let job = requested_job(&c).unwrap();
        assert!(job.metadata.name.unwrap().starts_with("geo-vacuum-"));
    }
}
