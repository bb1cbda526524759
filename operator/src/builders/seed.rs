//! The seed Job (`spec.seed`): `geodb seed` against the primary through the `-rw`
//! Service, as the database owner, once per digest of the settings. Like a migration run
//! it is not retried: a failed load is reported, and runs again only when the settings
//! change.

use k8s_openapi::api::batch::v1::Job;

use super::migrations::{geodb_container, job_volumes, one_shot};
use super::Cluster;
use crate::api::SeedSpec;
use crate::names::{cluster_labels, COMPONENT_SEED};
use crate::pod_contract::Credential;

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

/// The Job of the current settings, once `cluster.seed` holds their digest.
pub fn job(cluster: &Cluster) -> Option<Job> {
    let spec = cluster.spec.seed.as_ref()?;
    let hash = cluster.seed.as_ref()?;
    Some(Job {
        metadata: cluster.component_meta(cluster.names.seed_job(hash), COMPONENT_SEED),
        spec: Some(one_shot(
            cluster_labels(&cluster.names.cluster, COMPONENT_SEED),
            i64::from(spec.deadline_seconds),
            geodb_container(
                cluster,
                "seed",
                (&cluster.spec.database.owner, Credential::App),
                command(spec),
            ),
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
