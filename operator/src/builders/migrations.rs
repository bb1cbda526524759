//! The schema-migration Job (`spec.migrations`): one per digest of its inputs, against
//! the primary through the `-rw` Service, as the database owner. Built-in mode runs
//! `geodb migrate` over the ConfigMaps mounted as directories; image mode runs the user's
//! image with libpq's variables. No retry: a failed run is reported, and runs again only
//! when its inputs change.

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, EnvVar, EnvVarSource, PodSpec, PodTemplateSpec,
    ProjectedVolumeSource, SecretKeySelector, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::instance::{
    password_projection, restricted_container_security, restricted_pod_security, tls_projection,
};
use super::{env, Cluster};
use crate::api::MigrationsSpec;
use crate::names::{cluster_labels, COMPONENT_MIGRATION, POSTGRES_PORT};
use crate::pod_contract::{
    env as var, Credential, CA_CERT, PASSWORD_FILE, POSTGRES_UID, SECRETS_DIR, TLS_SUBDIR,
};

/// Where the ConfigMaps are mounted, one directory each.
const MIGRATIONS_DIR: &str = "/migrations";

pub(super) fn volume_mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// libpq's variables for the primary as `user` (every one-shot Job reads them).
pub(super) fn connection_env(cluster: &Cluster, user: &str) -> Vec<EnvVar> {
    let rw = cluster.service_host(&cluster.names.rw_service());
    vec![
        env(var::PGHOST, rw),
        env(var::PGPORT, POSTGRES_PORT.to_string()),
        env(var::PGUSER, user),
        env("PGDATABASE", cluster.spec.database.name.clone()),
        env(var::DATABASE, cluster.spec.database.name.clone()),
        env(var::PGSSLMODE, "verify-full"),
        env(
            var::PGSSLROOTCERT,
            format!("{SECRETS_DIR}/{TLS_SUBDIR}/{CA_CERT}"),
        ),
        env("HOME", "/tmp"),
    ]
}

fn container(cluster: &Cluster, spec: &MigrationsSpec) -> Container {
    let mut env_vars = connection_env(cluster, &cluster.spec.database.owner);
    let mut mounts = vec![volume_mount("secrets", SECRETS_DIR)];
    let (image, command, args) = match &spec.image {
        Some(own) => {
            // Their tools read libpq's PGPASSWORD; built-in mode reads a file instead.
            env_vars.push(EnvVar {
                name: "PGPASSWORD".into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: cluster.names.app_secret(),
                        key: PASSWORD_FILE.into(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            });
            env_vars.push(env("PYTHONDONTWRITEBYTECODE", "1"));
            let command = (!own.command.is_empty()).then(|| own.command.clone());
            let args = (!own.args.is_empty()).then(|| own.args.clone());
            (own.image.clone(), command, args)
        }
        None => {
            env_vars.push(env(
                var::JOB_PASSWORD_FILE,
                format!("{SECRETS_DIR}/{}", Credential::App.password_path()),
            ));
            let mut command = vec!["geodb".to_owned(), "migrate".to_owned()];
            for index in 0..spec.config_maps.len() {
                let path = format!("{MIGRATIONS_DIR}/{index}");
                command.extend(["--dir".to_owned(), path.clone()]);
                mounts.push(volume_mount(&format!("migrations-{index}"), &path));
            }
            (cluster.spec.image().to_owned(), Some(command), None)
        }
    };
    mounts.push(VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..VolumeMount::default()
    });
    Container {
        name: "migrate".into(),
        image: Some(image),
        image_pull_policy: Some(cluster.spec.image_pull_policy.as_str().to_owned()),
        command,
        args,
        env: Some(env_vars),
        volume_mounts: Some(mounts),
        security_context: Some(restricted_container_security()),
        // `geodb migrate` writes its outcome there; another tool's failure is told by
        // the end of its log.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    }
}

/// A container running `geodb <command>` from the cluster's image against the primary as
/// `user`, whose password it reads from `login`'s file (the volumes of [`job_volumes`]).
/// The command's own report is its termination message; a crash's is its log's end.
pub(super) fn geodb_container(
    cluster: &Cluster,
    name: &str,
    (user, login): (&str, Credential),
    command: Vec<String>,
) -> Container {
    let mut env_vars = connection_env(cluster, user);
    env_vars.push(env(
        var::JOB_PASSWORD_FILE,
        format!("{SECRETS_DIR}/{}", login.password_path()),
    ));
    Container {
        name: name.into(),
        image: Some(cluster.spec.image().to_owned()),
        image_pull_policy: Some(cluster.spec.image_pull_policy.as_str().to_owned()),
        command: Some(command),
        env: Some(env_vars),
        volume_mounts: Some(vec![
            volume_mount("secrets", SECRETS_DIR),
            VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..VolumeMount::default()
            },
        ]),
        security_context: Some(restricted_container_security()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    }
}

/// The login's password file and the CA under `SECRETS_DIR`, and a scratch `/tmp`.
pub(super) fn job_volumes(secret: String, login: Credential, cluster: &Cluster) -> Vec<Volume> {
    vec![
        Volume {
            name: "secrets".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![
                    password_projection(secret, login),
                    tls_projection(cluster, &[CA_CERT]),
                ]),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(Default::default()),
            ..Volume::default()
        },
    ]
}

fn volumes(cluster: &Cluster, spec: &MigrationsSpec) -> Vec<Volume> {
    let mut volumes = job_volumes(cluster.names.app_secret(), Credential::App, cluster);
    if spec.image.is_none() {
        for (index, name) in spec.config_maps.iter().enumerate() {
            volumes.push(Volume {
                name: format!("migrations-{index}"),
                config_map: Some(ConfigMapVolumeSource {
                    name: name.clone(),
                    optional: Some(false),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            });
        }
    }
    volumes
}

/// A Job that runs `container` once, with no retry, as the restricted `postgres` user.
pub(super) fn one_shot(
    labels: std::collections::BTreeMap<String, String>,
    deadline_seconds: i64,
    container: Container,
    volumes: Vec<Volume>,
) -> JobSpec {
    JobSpec {
        backoff_limit: Some(0),
        active_deadline_seconds: Some(deadline_seconds),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels),
                ..ObjectMeta::default()
            }),
            spec: Some(PodSpec {
                restart_policy: Some("Never".into()),
                automount_service_account_token: Some(false),
                security_context: Some(restricted_pod_security(POSTGRES_UID)),
                containers: vec![container],
                volumes: Some(volumes),
                ..PodSpec::default()
            }),
        },
        ..JobSpec::default()
    }
}

/// The Job of the current inputs, once `cluster.migrations` holds their digest.
pub fn job(cluster: &Cluster) -> Option<Job> {
    let spec = cluster.spec.migrations.as_ref()?;
    let hash = cluster.migrations.as_ref()?;
    let labels = cluster_labels(&cluster.names.cluster, COMPONENT_MIGRATION);
    // A failed migration is reported, not retried: the same inputs fail the same way.
    let mut job_spec = one_shot(
        labels,
        i64::from(spec.deadline_seconds),
        container(cluster, spec),
        volumes(cluster, spec),
    );
    // Their tool may not retry a refused connection (the `-rw` Service's endpoints can
    // trail the confirmed primary by a moment): it starts once a login succeeds.
    if spec.image.is_some() {
        if let Some(pod) = job_spec.template.spec.as_mut() {
            pod.init_containers = Some(vec![geodb_container(
                cluster,
                "wait-ready",
                (&cluster.spec.database.owner, Credential::App),
                vec!["geodb".into(), "wait-ready".into()],
            )]);
        }
    }
    Some(Job {
        metadata: cluster.component_meta(cluster.names.migration_job(hash), COMPONENT_MIGRATION),
        spec: Some(job_spec),
        ..Job::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::cluster;
    use serde_json::json;

    #[test]
    fn built_in_mounts_each_config_map_and_reads_a_password_file() {
        let mut c = cluster(json!({"storage": {"size": "1Gi"},
            "migrations": {"configMaps": ["schema", "more"]}}));
        assert!(job(&c).is_none(), "no digest, no Job");
        c.migrations = Some("abc123".into());
        let job = job(&c).unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("geo-migrate-abc123"));
        let spec = job.spec.unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        let pod = spec.template.spec.unwrap();
        let container = &pod.containers[0];
        let command = container.command.clone().unwrap();
        assert_eq!(
            command,
            [
                "geodb",
                "migrate",
                "--dir",
                "/migrations/0",
                "--dir",
                "/migrations/1"
            ]
        );
        let env = container.env.clone().unwrap();
        assert!(env.iter().all(|e| e.name != "PGPASSWORD"));
        assert!(env
            .iter()
            .any(|e| e.name == "PGSSLMODE" && e.value.as_deref() == Some("verify-full")));
        let volumes = pod.volumes.unwrap();
        assert_eq!(
            volumes
                .iter()
                .filter_map(|v| v.config_map.as_ref().map(|c| c.name.clone()))
                .collect::<Vec<_>>(),
            ["schema", "more"]
        );
    }

    #[test]
    fn image_mode_runs_their_command_with_libpq_variables() {
        let mut c = cluster(json!({"storage": {"size": "1Gi"},
            "migrations": {"image": {"image": "example/alembic:1", "command": ["alembic"], "args": ["upgrade", "head"]}}}));
        c.migrations = Some("def".into());
        let pod = job(&c).unwrap().spec.unwrap().template.spec.unwrap();
        let container = &pod.containers[0];
        assert_eq!(container.image.as_deref(), Some("example/alembic:1"));
        assert_eq!(container.args.clone().unwrap(), ["upgrade", "head"]);
        let env = container.env.clone().unwrap();
        let password = env.iter().find(|e| e.name == "PGPASSWORD").unwrap();
        assert!(
            password.value.is_none(),
            "the password comes from the Secret"
        );
        assert!(env
            .iter()
            .any(|e| e.name == "PGHOST" && e.value.as_deref() == Some("geo-rw.maps.svc")));
        // It starts once the primary accepts a login through the same Service.
        let init = pod.init_containers.unwrap();
        assert_eq!(init[0].command.clone().unwrap(), ["geodb", "wait-ready"]);
        assert!(init[0]
            .env
            .clone()
            .unwrap()
            .iter()
            .any(|e| e.name == "PGHOST"));
    }
}
