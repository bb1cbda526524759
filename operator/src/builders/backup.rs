//! Base backups (`spec.backup`): a CronJob on the schedule and a Job for each new value
//! of the `geodb.io/backup-request` annotation, both running `geodb backup` in the
//! cluster's own image (it has `pg_basebackup`) as the replication role.

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, KeyToPath, PodSpec, PodTemplateSpec, ProjectedVolumeSource,
    SecretProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::instance::{restricted_container_security, restricted_pod_security};
use super::{archive, content_hash, env, Cluster};
use crate::api::BackupSpec;
use crate::names::{cluster_labels, COMPONENT_BACKUP, POSTGRES_PORT, REPLICATION_USER};
use crate::pod_contract::{env as var, Credential, PASSWORD_FILE, POSTGRES_UID, SECRETS_DIR};

/// A backup that runs longer than this is stopped (and counts as failed: its manifest
/// is never written).
const DEADLINE_SECONDS: i64 = 6 * 3600;

/// The server to copy: a streaming replica when preferred and one serves reads, else the
/// primary.
fn source_host(cluster: &Cluster, backup: &BackupSpec) -> String {
    let service = if backup.prefer_standby && cluster.standby_ready {
        cluster.names.ro_service()
    } else {
        cluster.names.rw_service()
    };
    cluster.service_host(&service)
}

fn backup_env(cluster: &Cluster, backup: &BackupSpec) -> Vec<EnvVar> {
    let mut vars = archive::archive_env(cluster);
    // From a replica the primary archives the last segment when it switches, after
    // archiveTimeout at worst.
    let wal_wait = i64::from(backup.archive_timeout_seconds) * 2 + 120;
    vars.extend([
        env(var::BACKUP_HOST, source_host(cluster, backup)),
        env(var::BACKUP_PORT, POSTGRES_PORT.to_string()),
        env(var::BACKUP_USER, REPLICATION_USER),
        env(
            var::BACKUP_PASSWORD_FILE,
            format!("{SECRETS_DIR}/{}", Credential::Replication.password_path()),
        ),
        env(var::BACKUP_WAL_WAIT_SECONDS, wal_wait.to_string()),
    ]);
    if let Some(retention) = &backup.retention {
        if let Some(window) = &retention.window {
            vars.push(env(var::BACKUP_RETENTION_WINDOW, window.clone()));
        }
        if let Some(count) = retention.count {
            vars.push(env(var::BACKUP_RETENTION_COUNT, count.to_string()));
        }
    }
    vars
}

fn secrets_volume(cluster: &Cluster) -> Volume {
    let replication = VolumeProjection {
        secret: Some(SecretProjection {
            name: cluster.names.replication_secret(),
            items: Some(vec![KeyToPath {
                key: PASSWORD_FILE.into(),
                path: Credential::Replication.password_path(),
                mode: Some(0o400),
            }]),
            ..SecretProjection::default()
        }),
        ..VolumeProjection::default()
    };
    Volume {
        name: "secrets".into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(
                std::iter::once(replication)
                    .chain(archive::archive_projections(cluster))
                    .collect(),
            ),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn pod_template(cluster: &Cluster, backup: &BackupSpec) -> PodTemplateSpec {
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(cluster_labels(&cluster.names.cluster, COMPONENT_BACKUP)),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            security_context: Some(restricted_pod_security(POSTGRES_UID)),
            containers: vec![Container {
                name: "backup".into(),
                image: Some(cluster.spec.image().to_owned()),
                image_pull_policy: Some(cluster.spec.image_pull_policy.as_str().to_owned()),
                command: Some(vec!["geodb".into(), "backup".into()]),
                env: Some(backup_env(cluster, backup)),
                volume_mounts: Some(vec![
                    mount("secrets", SECRETS_DIR, true),
                    mount("tmp", "/tmp", false),
                ]),
                security_context: Some(restricted_container_security()),
                ..Container::default()
            }],
            volumes: Some(vec![
                secrets_volume(cluster),
                Volume {
                    name: "tmp".into(),
                    empty_dir: Some(Default::default()),
                    ..Volume::default()
                },
            ]),
            ..PodSpec::default()
        }),
    }
}

fn job_spec(cluster: &Cluster, backup: &BackupSpec) -> JobSpec {
    JobSpec {
        // One retry: a backup cut by a restarted source is worth a second copy.
        backoff_limit: Some(1),
        active_deadline_seconds: Some(DEADLINE_SECONDS),
        template: pod_template(cluster, backup),
        ..JobSpec::default()
    }
}

/// The scheduled backups, when `spec.backup.schedule` is set.
pub fn cron_job(cluster: &Cluster) -> Option<CronJob> {
    let backup = cluster.spec.backup.as_ref()?;
    let schedule = backup.schedule.clone()?;
    let name = cluster.names.backup_cron_job();
    Some(CronJob {
        metadata: cluster.component_meta(name, COMPONENT_BACKUP),
        spec: Some(CronJobSpec {
            schedule,
            time_zone: Some("Etc/UTC".into()),
            // Never two copies at once: the second would only slow the first.
            concurrency_policy: Some("Forbid".into()),
            starting_deadline_seconds: Some(600),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(3),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(cluster_labels(&cluster.names.cluster, COMPONENT_BACKUP)),
                    ..ObjectMeta::default()
                }),
                spec: Some(job_spec(cluster, backup)),
            },
            ..CronJobSpec::default()
        }),
        ..CronJob::default()
    })
}

/// The backup the current value of the backup-request annotation asks for. It stays
/// (finished) until the value changes, so one value never runs two backups.
pub fn requested_job(cluster: &Cluster) -> Option<Job> {
    let backup = cluster.spec.backup.as_ref()?;
    // Made once the first primary has run: before that there is nothing to copy.
    if !cluster.bootstrapped {
        return None;
    }
    let request = cluster.backup_request.as_deref()?;
    let hash = content_hash(&[request.as_bytes()]);
    let name = cluster.names.requested_backup_job(&hash[..10]);
    Some(Job {
        metadata: cluster.component_meta(name, COMPONENT_BACKUP),
        spec: Some(job_spec(cluster, backup)),
        ..Job::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::cluster as test_cluster;

    fn with_backup(extra: serde_json::Value) -> Cluster {
        let mut backup = serde_json::json!({"objectStore": {
            "endpoint": "https://s3.local:8333", "bucket": "b",
            "credentials": {"secretName": "s3"}}});
        if let (Some(b), Some(e)) = (backup.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        test_cluster(
            serde_json::json!({"instances": 2, "storage": {"size": "1Gi"}, "backup": backup}),
        )
    }

    fn env_of(pod: &PodTemplateSpec, name: &str) -> Option<String> {
        pod.spec.as_ref()?.containers[0]
            .env
            .as_ref()?
            .iter()
            .find(|v| v.name == name)?
            .value
            .clone()
    }

    #[test]
    fn no_schedule_no_cron_job_and_no_request_no_job() {
        let cluster = with_backup(serde_json::json!({}));
        assert!(cron_job(&cluster).is_none());
        assert!(requested_job(&cluster).is_none());
        let plain = test_cluster(serde_json::json!({"storage": {"size": "1Gi"}}));
        assert!(cron_job(&plain).is_none());
    }

    #[test]
    fn scheduled_backups_run_one_at_a_time_as_non_root() {
        let cluster = with_backup(serde_json::json!({"schedule": "0 3 * * *",
            "retention": {"window": "7d", "count": 2}}));
        let cron = cron_job(&cluster).unwrap();
        let spec = cron.spec.unwrap();
        assert_eq!(spec.schedule, "0 3 * * *");
        assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
        let pod = spec.job_template.spec.unwrap().template;
        let pod_spec = pod.spec.as_ref().unwrap();
        assert_eq!(pod_spec.automount_service_account_token, Some(false));
        let psc = pod_spec.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            env_of(&pod, var::BACKUP_RETENTION_WINDOW).as_deref(),
            Some("7d")
        );
        assert_eq!(
            env_of(&pod, var::BACKUP_RETENTION_COUNT).as_deref(),
            Some("2")
        );
        assert_eq!(
            env_of(&pod, var::BACKUP_USER).as_deref(),
            Some(REPLICATION_USER)
        );
        assert_eq!(env_of(&pod, var::S3_PREFIX).as_deref(), Some("maps/geo"));
        // No standby ready yet: the primary.
        assert_eq!(
            env_of(&pod, var::BACKUP_HOST).as_deref(),
            Some("geo-rw.maps.svc")
        );
    }

    #[test]
    fn a_ready_standby_is_preferred_and_each_request_has_its_own_job() {
        let mut cluster = with_backup(serde_json::json!({}));
        cluster.standby_ready = true;
        cluster.backup_request = Some("2026-12-02T03:00".into());
        assert!(
            requested_job(&cluster).is_none(),
            "no Job before the first primary ran"
        );
        cluster.bootstrapped = true;
        let job = requested_job(&cluster).unwrap();
        let pod = job.spec.unwrap().template;
        assert_eq!(
            env_of(&pod, var::BACKUP_HOST).as_deref(),
            Some("geo-ro.maps.svc")
        );
        let first = requested_job(&cluster).unwrap().metadata.name.unwrap();
        cluster.backup_request = Some("again".into());
        let second = requested_job(&cluster).unwrap().metadata.name.unwrap();
        assert!(
            first.starts_with("geo-backup-") && first != second,
            "{first} {second}"
        );
        let mut primary_only = with_backup(serde_json::json!({"preferStandby": false}));
        primary_only.standby_ready = true;
        primary_only.bootstrapped = true;
        primary_only.backup_request = Some("x".into());
        let pod = requested_job(&primary_only).unwrap().spec.unwrap().template;
        assert_eq!(
            env_of(&pod, var::BACKUP_HOST).as_deref(),
            Some("geo-rw.maps.svc")
        );
    }
}
