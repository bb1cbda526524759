//! The seed Job (`spec.seed`): `geodb seed` against the primary through the `-rw`
//! Service, as the database owner, once per digest of the settings. Like a migration run
//! it is not retried: a failed load is reported, and runs again only when the settings
//! change.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, VolumeMount};

use super::instance::restricted_container_security;
use super::migrations::{connection_env, job_volumes, one_shot, volume_mount};
use super::{env, Cluster};
use crate::api::SeedSpec;
use crate::names::{cluster_labels, COMPONENT_SEED};
use crate::pod_contract::{env as var, Credential, SECRETS_DIR};

/// `geodb seed` with the settings' count and random seed (pure).
pub fn command(spec: &SeedSpec) -> Vec<String> {
    let mut command = vec![
        "geodb".to_owned(),
        "seed".to_owned(),
        "--count".to_owned(),
        spec.locations.to_string(),
    ];
    if let Some(seed) = spec.random_seed {
        command.extend(["--seed".to_owned(), seed.to_string()]);
    }
    command
}

fn container(cluster: &Cluster, spec: &SeedSpec) -> Container {
    let mut env_vars = connection_env(cluster, &cluster.spec.database.owner);
    env_vars.push(env(
        var::JOB_PASSWORD_FILE,
        format!("{SECRETS_DIR}/{}", Credential::App.password_path()),
    ));
    Container {
        name: "seed".into(),
        image: Some(cluster.spec.image().to_owned()),
        image_pull_policy: Some(cluster.spec.image_pull_policy.as_str().to_owned()),
        command: Some(command(spec)),
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
        // `geodb seed` writes its summary there; a failure is told by its log's end.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    }
}

/// The Job of the current settings, once `cluster.seed` holds their digest.
pub fn job(cluster: &Cluster) -> Option<Job> {
    let spec = cluster.spec.seed.as_ref()?;
    let hash = cluster.seed.as_ref()?;
    Some(Job {
        metadata: cluster.component_meta(cluster.names.seed_job(hash), COMPONENT_SEED),
        spec: Some(one_shot(
            cluster_labels(&cluster.names.cluster, COMPONENT_SEED),
            i64::from(spec.deadline_seconds),
            container(cluster, spec),
            job_volumes(cluster.names.app_secret(), Credential::App, cluster),
        )),
        ..Job::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::cluster;
    use serde_json::json;

    #[test]
    fn a_seed_job_runs_geodb_seed_as_the_owner_once_its_digest_is_set() {
        let mut c = cluster(json!({"storage": {"size": "1Gi"},
            "seed": {"locations": 5000, "randomSeed": 7}}));
        assert!(job(&c).is_none(), "no digest, no Job");
        c.seed = Some("abc".into());
        let job = job(&c).unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("geo-seed-abc"));
        let spec = job.spec.unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.active_deadline_seconds, Some(1800));
        let pod = spec.template.spec.unwrap();
        let container = &pod.containers[0];
        assert_eq!(
            container.command.clone().unwrap(),
            ["geodb", "seed", "--count", "5000", "--seed", "7"]
        );
        let env = container.env.clone().unwrap();
        assert!(env.iter().all(|e| e.name != "PGPASSWORD"));
        assert!(env
            .iter()
            .any(|e| e.name == "PGUSER" && e.value.as_deref() == Some("app")));
        assert!(env.iter().any(|e| e.name == "GEODB_PASSWORD_FILE"));
    }
}
