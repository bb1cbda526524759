//! Base backups and logical dumps (`spec.backup`): for each, a CronJob on its schedule
//! and a Job for each new value of its request annotation, running `geodb backup` (as
//! the replication role, with `pg_basebackup`) or `geodb dump` (as the superuser, with
//! `pg_dump`) in the cluster's own image.

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, PodSpec, PodTemplateSpec, ProjectedVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::instance::{
    password_projection, restricted_container_security, restricted_pod_security, tls_projection,
};
use super::{archive, content_hash, env, Cluster};
use crate::api::BackupSpec;
use crate::names::{
    cluster_labels, COMPONENT_BACKUP, COMPONENT_DUMP, POSTGRES_PORT, REPLICATION_USER, SUPERUSER,
};
use crate::pod_contract::{env as var, Credential, CA_CERT, POSTGRES_UID, SECRETS_DIR, TLS_DIR};

/// A backup that runs longer than this is stopped (and counts as failed: its manifest
/// is never written).
const DEADLINE_SECONDS: i64 = 6 * 3600;

/// What a Job of this module does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// `geodb backup`: a base backup, then its retention.
    Base,
    /// `geodb dump`: a logical dump of every database and the roles, then its retention.
    Dump,
}

impl Task {
    pub const ALL: [Task; 2] = [Task::Base, Task::Dump];

    fn component(self) -> &'static str {
        match self {
            Task::Base => COMPONENT_BACKUP,
            Task::Dump => COMPONENT_DUMP,
        }
    }

    fn subcommand(self) -> &'static str {
        match self {
            Task::Base => "backup",
            Task::Dump => "dump",
        }
    }

    /// The role it logs in as: a base backup needs replication only; a dump reads every
    /// table of every database.
    fn login(self) -> (&'static str, Credential) {
        match self {
            Task::Base => (REPLICATION_USER, Credential::Replication),
            Task::Dump => (SUPERUSER, Credential::Superuser),
        }
    }

    /// Its schedule, when `spec.backup` asks for scheduled runs.
    fn schedule(self, backup: &BackupSpec) -> Option<String> {
        match self {
            Task::Base => backup.schedule.clone(),
            Task::Dump => backup.dumps.as_ref()?.schedule.clone(),
        }
    }

    /// Whether `spec.backup` asks for it at all.
    fn enabled(self, backup: &BackupSpec) -> bool {
        match self {
            Task::Base => true,
            Task::Dump => backup.dumps.is_some(),
        }
    }

    fn request(self, cluster: &Cluster) -> Option<&str> {
        match self {
            Task::Base => cluster.backup_request.as_deref(),
            Task::Dump => cluster.dump_request.as_deref(),
        }
    }

    fn cron_job_name(self, cluster: &Cluster) -> String {
        match self {
            Task::Base => cluster.names.backup_cron_job(),
            Task::Dump => cluster.names.dump_cron_job(),
        }
    }

    fn requested_job_name(self, cluster: &Cluster, hash: &str) -> String {
        match self {
            Task::Base => cluster.names.requested_backup_job(hash),
            Task::Dump => cluster.names.requested_dump_job(hash),
        }
    }
}

/// The server a base backup copies: a streaming replica when preferred and one serves
/// reads, else the primary. Dumps always read the primary: a long `pg_dump` on a
/// standby is cancelled when replay needs a lock it holds.
fn source_host(cluster: &Cluster, backup: &BackupSpec, task: Task) -> String {
    let service = if task == Task::Base && backup.prefer_standby && cluster.standby_ready {
        cluster.names.ro_service()
    } else {
        cluster.names.rw_service()
    };
    cluster.service_host(&service)
}

fn task_env(cluster: &Cluster, backup: &BackupSpec, task: Task) -> Vec<EnvVar> {
    let mut vars = archive::archive_env(cluster);
    let (user, credential) = task.login();
    vars.extend([
        env(var::BACKUP_HOST, source_host(cluster, backup, task)),
        env(var::BACKUP_PORT, POSTGRES_PORT.to_string()),
        env(var::BACKUP_USER, user),
        env(
            var::BACKUP_PASSWORD_FILE,
            format!("{SECRETS_DIR}/{}", credential.password_path()),
        ),
        // libpq's own variables: pg_basebackup, pg_dump and pg_dumpall verify the server.
        env("PGSSLMODE", "verify-full"),
        env("PGSSLROOTCERT", format!("{TLS_DIR}/{CA_CERT}")),
    ]);
    match task {
        Task::Base => {
            // From a replica the primary archives the last segment when it switches,
            // after archiveTimeout at worst.
            let wal_wait = i64::from(backup.archive_timeout_seconds) * 2 + 120;
            vars.push(env(var::BACKUP_WAL_WAIT_SECONDS, wal_wait.to_string()));
            if let Some(retention) = &backup.retention {
                if let Some(window) = &retention.window {
                    vars.push(env(var::BACKUP_RETENTION_WINDOW, window.clone()));
                }
                if let Some(count) = retention.count {
                    vars.push(env(var::BACKUP_RETENTION_COUNT, count.to_string()));
                }
            }
        }
        Task::Dump => {
            if let Some(dumps) = &backup.dumps {
                vars.push(env(var::DUMP_KEEP, dumps.keep.to_string()));
            }
        }
    }
    vars
}

fn secrets_volume(cluster: &Cluster, task: Task) -> Volume {
    let (_, credential) = task.login();
    let secret = match credential {
        Credential::Superuser => cluster.names.superuser_secret(),
        Credential::Replication => cluster.names.replication_secret(),
        Credential::App => cluster.names.app_secret(),
        Credential::Pooler => cluster.names.pooler_login_secret(),
    };
    Volume {
        name: "secrets".into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(
                [
                    password_projection(secret, credential),
                    tls_projection(cluster, &[CA_CERT]),
                ]
                .into_iter()
                .chain(archive::archive_projections(cluster))
                .collect(),
            ),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn pod_template(cluster: &Cluster, backup: &BackupSpec, task: Task) -> PodTemplateSpec {
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(cluster_labels(&cluster.names.cluster, task.component())),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            security_context: Some(restricted_pod_security(POSTGRES_UID)),
            containers: vec![Container {
                name: task.subcommand().into(),
                image: Some(cluster.spec.image().to_owned()),
                image_pull_policy: Some(cluster.spec.image_pull_policy.as_str().to_owned()),
                command: Some(vec!["geodb".into(), task.subcommand().into()]),
                env: Some(task_env(cluster, backup, task)),
                volume_mounts: Some(vec![
                    mount("secrets", SECRETS_DIR, true),
                    mount("tmp", "/tmp", false),
                ]),
                security_context: Some(restricted_container_security()),
                ..Container::default()
            }],
            volumes: Some(vec![
                secrets_volume(cluster, task),
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

fn job_spec(cluster: &Cluster, backup: &BackupSpec, task: Task) -> JobSpec {
    JobSpec {
        // One retry: a copy cut by a restarted source is worth a second try.
        backoff_limit: Some(1),
        active_deadline_seconds: Some(DEADLINE_SECONDS),
        template: pod_template(cluster, backup, task),
        ..JobSpec::default()
    }
}

/// The scheduled runs of `task`, when `spec.backup` gives it a schedule.
pub fn cron_job(cluster: &Cluster, task: Task) -> Option<CronJob> {
    let backup = cluster.spec.backup.as_ref()?;
    let schedule = task.schedule(backup)?;
    let component = task.component();
    Some(CronJob {
        metadata: cluster.component_meta(task.cron_job_name(cluster), component),
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
                    labels: Some(cluster_labels(&cluster.names.cluster, component)),
                    ..ObjectMeta::default()
                }),
                spec: Some(job_spec(cluster, backup, task)),
            },
            ..CronJobSpec::default()
        }),
        ..CronJob::default()
    })
}

/// The run the current value of `task`'s request annotation asks for. It stays
/// (finished) until the value changes, so one value never runs twice.
pub fn requested_job(cluster: &Cluster, task: Task) -> Option<Job> {
    let backup = cluster.spec.backup.as_ref()?;
    // Made once the first primary has run: before that there is nothing to copy.
    if !cluster.bootstrapped || !task.enabled(backup) {
        return None;
    }
    let request = task.request(cluster)?;
    let hash = content_hash(&[request.as_bytes()]);
    let name = task.requested_job_name(cluster, &hash[..10]);
    Some(Job {
        metadata: cluster.component_meta(name, task.component()),
        spec: Some(job_spec(cluster, backup, task)),
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
        assert!(cron_job(&cluster, Task::Base).is_none());
        assert!(requested_job(&cluster, Task::Base).is_none());
        let plain = test_cluster(serde_json::json!({"storage": {"size": "1Gi"}}));
        assert!(cron_job(&plain, Task::Base).is_none());
    }

    #[test]
    fn scheduled_backups_run_one_at_a_time_as_non_root() {
        let cluster = with_backup(serde_json::json!({"schedule": "0 3 * * *",
            "retention": {"window": "7d", "count": 2}}));
        let cron = cron_job(&cluster, Task::Base).unwrap();
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
            requested_job(&cluster, Task::Base).is_none(),
            "no Job before the first primary ran"
        );
        cluster.bootstrapped = true;
        let job = requested_job(&cluster, Task::Base).unwrap();
        let pod = job.spec.unwrap().template;
        assert_eq!(
            env_of(&pod, var::BACKUP_HOST).as_deref(),
            Some("geo-ro.maps.svc")
        );
        let first = requested_job(&cluster, Task::Base)
            .unwrap()
            .metadata
            .name
            .unwrap();
        cluster.backup_request = Some("again".into());
        let second = requested_job(&cluster, Task::Base)
            .unwrap()
            .metadata
            .name
            .unwrap();
        assert!(
            first.starts_with("geo-backup-") && first != second,
            "{first} {second}"
        );
        let mut primary_only = with_backup(serde_json::json!({"preferStandby": false}));
        primary_only.standby_ready = true;
        primary_only.bootstrapped = true;
        primary_only.backup_request = Some("x".into());
        let pod = requested_job(&primary_only, Task::Base)
            .unwrap()
            .spec
            .unwrap()
            .template;
        assert_eq!(
            env_of(&pod, var::BACKUP_HOST).as_deref(),
            Some("geo-rw.maps.svc")
        );
    }

    #[test]
    fn dumps_run_as_the_superuser_against_the_primary() {
        let mut cluster = with_backup(serde_json::json!({
            "dumps": {"schedule": "0 4 * * *", "keep": 3}}));
        cluster.standby_ready = true;
        let cron = cron_job(&cluster, Task::Dump).unwrap();
        assert_eq!(cron.metadata.name.as_deref(), Some("geo-dump"));
        let spec = cron.spec.unwrap();
        assert_eq!(spec.schedule, "0 4 * * *");
        let pod = spec.job_template.spec.unwrap().template;
        let container = &pod.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            container.command.as_deref(),
            Some(&["geodb".to_owned(), "dump".to_owned()][..])
        );
        assert_eq!(env_of(&pod, var::BACKUP_USER).as_deref(), Some(SUPERUSER));
        assert_eq!(env_of(&pod, var::DUMP_KEEP).as_deref(), Some("3"));
        assert_eq!(
            env_of(&pod, var::BACKUP_HOST).as_deref(),
            Some("geo-rw.maps.svc")
        );
        let projected = pod.spec.as_ref().unwrap().volumes.as_ref().unwrap()[0]
            .projected
            .clone()
            .unwrap();
        let first = projected.sources.unwrap()[0].secret.clone().unwrap();
        assert_eq!(first.name, "geo-superuser");

        // No dumps in the spec: no dump Job, whatever the annotation says.
        let mut plain = with_backup(serde_json::json!({}));
        plain.bootstrapped = true;
        plain.dump_request = Some("now".into());
        assert!(cron_job(&plain, Task::Dump).is_none());
        assert!(requested_job(&plain, Task::Dump).is_none());
        cluster.bootstrapped = true;
        cluster.dump_request = Some("now".into());
        let job = requested_job(&cluster, Task::Dump).unwrap();
        assert!(job.metadata.name.unwrap().starts_with("geo-dump-"));
        assert!(requested_job(&cluster, Task::Base).is_none());
    }
}
