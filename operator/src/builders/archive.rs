//! Continuous WAL archiving (`spec.backup`): the settings that make PostgreSQL run
//! `geodb wal-push` for every finished segment, and what that command reads (the object
//! store's address in the environment, its access key and CA mounted from the user's
//! Secrets).

use k8s_openapi::api::core::v1::{EnvVar, KeyToPath, SecretProjection, VolumeProjection};

use super::{env, Cluster};
use crate::api::{ObjectStoreSpec, RecoverySpec};
use crate::pod_contract::{
    env as var, S3_ACCESS_KEY_ID_PATH, S3_CA_PATH, S3_RECOVERY_ACCESS_KEY_ID_PATH,
    S3_RECOVERY_CA_PATH, S3_RECOVERY_SECRET_ACCESS_KEY_PATH, S3_SECRET_ACCESS_KEY_PATH,
    SECRETS_DIR,
};

/// The program PostgreSQL runs for each segment to archive.
pub const ARCHIVE_COMMAND: &str = "geodb wal-push %p";

/// `postgresql.conf` settings: archiving on, through `geodb wal-push` (a replica runs it
/// only once promoted: `archive_mode = on`, not `always`).
pub fn settings(cluster: &Cluster) -> Vec<(&'static str, String)> {
    let Some(backup) = &cluster.spec.backup else {
        return Vec::new();
    };
    vec![
        ("archive_mode", "on".into()),
        ("archive_command", ARCHIVE_COMMAND.into()),
        (
            "archive_timeout",
            format!("{}s", backup.archive_timeout_seconds),
        ),
    ]
}

/// Where one object store's access key and CA are mounted.
struct Mounted {
    access_key_id: &'static str,
    secret_access_key: &'static str,
    ca: &'static str,
}

const OWN: Mounted = Mounted {
    access_key_id: S3_ACCESS_KEY_ID_PATH,
    secret_access_key: S3_SECRET_ACCESS_KEY_PATH,
    ca: S3_CA_PATH,
};

const RECOVERY: Mounted = Mounted {
    access_key_id: S3_RECOVERY_ACCESS_KEY_ID_PATH,
    secret_access_key: S3_RECOVERY_SECRET_ACCESS_KEY_PATH,
    ca: S3_RECOVERY_CA_PATH,
};

/// The variables of one object store, named by `name` (the own archive's names, or the
/// recovery source's).
fn store_env(
    store: &ObjectStoreSpec,
    path: String,
    mounted: &Mounted,
    name: impl Fn(&str) -> String,
) -> Vec<EnvVar> {
    let mut vars = vec![
        env(&name(var::S3_ENDPOINT), store.endpoint.clone()),
        env(&name(var::S3_BUCKET), store.bucket.clone()),
        env(&name(var::S3_PREFIX), path),
        env(&name(var::S3_REGION), store.region.clone()),
        env(&name(var::S3_PATH_STYLE), store.path_style.to_string()),
        env(
            &name(var::S3_ACCESS_KEY_ID_FILE),
            format!("{SECRETS_DIR}/{}", mounted.access_key_id),
        ),
        env(
            &name(var::S3_SECRET_ACCESS_KEY_FILE),
            format!("{SECRETS_DIR}/{}", mounted.secret_access_key),
        ),
    ];
    if store.ca.is_some() {
        vars.push(env(
            &name(var::S3_CA_FILE),
            format!("{SECRETS_DIR}/{}", mounted.ca),
        ));
    }
    vars
}

/// The own archive's environment: what `geodb wal-push` and `geodb backup` read.
pub fn archive_env(cluster: &Cluster) -> Vec<EnvVar> {
    let Some(backup) = &cluster.spec.backup else {
        return Vec::new();
    };
    let store = &backup.object_store;
    let path = store.path_for(&cluster.namespace, &cluster.names.cluster);
    let mut vars = store_env(store, path, &OWN, str::to_owned);
    vars.push(env(var::WAL_COMPRESSION, backup.compression.as_str()));
    vars
}

/// The recovery source and target of a cluster bootstrapped from backups.
fn recovery_env(cluster: &Cluster) -> Vec<EnvVar> {
    let Some(recovery) = recovery(cluster) else {
        return Vec::new();
    };
    let source = &recovery.source;
    let path = source.path_for(&cluster.namespace, &cluster.names.cluster);
    let mut vars = store_env(source, path, &RECOVERY, var::recovery);
    vars.push(env(var::RECOVERY_TARGET, recovery.target.encode()));
    vars
}

fn recovery(cluster: &Cluster) -> Option<&RecoverySpec> {
    cluster.spec.bootstrap.as_ref()?.recovery.as_ref()
}

/// The instance container's environment for archiving and recovery (inherited from the
/// agent by PostgreSQL and so by `geodb wal-push` / `wal-fetch`).
pub fn env_vars(cluster: &Cluster) -> Vec<EnvVar> {
    let mut vars = archive_env(cluster);
    vars.extend(recovery_env(cluster));
    vars
}

fn project(secret: &str, items: Vec<(String, &str)>) -> VolumeProjection {
    VolumeProjection {
        secret: Some(SecretProjection {
            name: secret.to_owned(),
            items: Some(
                items
                    .into_iter()
                    .map(|(key, path)| KeyToPath {
                        key,
                        path: path.to_owned(),
                        mode: Some(0o400),
                    })
                    .collect(),
            ),
            ..SecretProjection::default()
        }),
        ..VolumeProjection::default()
    }
}

fn store_projections(store: &ObjectStoreSpec, mounted: &Mounted) -> Vec<VolumeProjection> {
    let credentials = &store.credentials;
    let mut sources = vec![project(
        &credentials.secret_name,
        vec![
            (credentials.access_key_id_key.clone(), mounted.access_key_id),
            (
                credentials.secret_access_key_key.clone(),
                mounted.secret_access_key,
            ),
        ],
    )];
    if let Some(ca) = &store.ca {
        sources.push(project(&ca.secret_name, vec![(ca.key.clone(), mounted.ca)]));
    }
    sources
}

/// The own archive's access key (and CA) in a secrets volume.
pub fn archive_projections(cluster: &Cluster) -> Vec<VolumeProjection> {
    cluster
        .spec
        .backup
        .as_ref()
        .map(|backup| store_projections(&backup.object_store, &OWN))
        .unwrap_or_default()
}

/// The object stores' access keys (and CAs) in the instance's secrets volume.
pub fn projections(cluster: &Cluster) -> Vec<VolumeProjection> {
    let mut sources = archive_projections(cluster);
    if let Some(recovery) = recovery(cluster) {
        sources.extend(store_projections(&recovery.source, &RECOVERY));
    }
    sources
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::cluster as test_cluster;

    #[test]
    fn nothing_without_a_backup_spec() {
        let cluster = test_cluster(serde_json::json!({"storage": {"size": "1Gi"}}));
        assert!(settings(&cluster).is_empty());
        assert!(env_vars(&cluster).is_empty());
        assert!(projections(&cluster).is_empty());
    }

    #[test]
    fn archiving_through_wal_push_with_the_store_in_the_environment() {
        let cluster = test_cluster(serde_json::json!({"storage": {"size": "1Gi"},
            "backup": {"archiveTimeoutSeconds": 30, "objectStore": {
                "endpoint": "https://s3.local:8333", "bucket": "b",
                "credentials": {"secretName": "s3"}, "ca": {"secretName": "s3-ca", "key": "ca.crt"}}}}));
        assert_eq!(
            settings(&cluster),
            vec![
                ("archive_mode", "on".to_owned()),
                ("archive_command", ARCHIVE_COMMAND.to_owned()),
                ("archive_timeout", "30s".to_owned()),
            ]
        );
        let vars = env_vars(&cluster);
        let value = |name: &str| {
            vars.iter()
                .find(|v| v.name == name)
                .and_then(|v| v.value.clone())
        };
        assert_eq!(value(var::S3_PREFIX).as_deref(), Some("maps/geo"));
        assert_eq!(
            value(var::S3_CA_FILE).as_deref(),
            Some("/etc/geodb/secrets/s3/ca.crt")
        );
        let secrets: Vec<String> = projections(&cluster)
            .iter()
            .filter_map(|p| p.secret.as_ref().map(|s| s.name.clone()))
            .collect();
        assert_eq!(secrets, ["s3", "s3-ca"]);
    }

    #[test]
    fn a_recovery_reads_its_source_under_other_names() {
        let cluster = test_cluster(serde_json::json!({"storage": {"size": "1Gi"},
            "bootstrap": {"recovery": {"target": {"time": "2026-12-01T10:00:00Z"},
                "source": {"endpoint": "https://s3.local:8333", "bucket": "b", "path": "maps/old",
                    "credentials": {"secretName": "s3-old"}}}}}));
        let vars = env_vars(&cluster);
        let value = |name: &str| {
            vars.iter()
                .find(|v| v.name == name)
                .and_then(|v| v.value.clone())
        };
        assert_eq!(
            value("GEODB_RECOVERY_S3_PREFIX").as_deref(),
            Some("maps/old")
        );
        assert_eq!(
            value("GEODB_RECOVERY_S3_ACCESS_KEY_ID_FILE").as_deref(),
            Some("/etc/geodb/secrets/s3-recovery/access-key-id")
        );
        assert_eq!(
            value(var::RECOVERY_TARGET).as_deref(),
            Some("time:2026-12-01T10:00:00Z")
        );
        // No own archive: nothing under the own names.
        assert_eq!(value(var::S3_PREFIX), None);
        let secrets: Vec<String> = projections(&cluster)
            .iter()
            .filter_map(|p| p.secret.as_ref().map(|s| s.name.clone()))
            .collect();
        assert_eq!(secrets, ["s3-old"]);
    }
}
