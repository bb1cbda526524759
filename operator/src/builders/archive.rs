//! Continuous WAL archiving (`spec.backup`): the settings that make PostgreSQL run
//! `geodb wal-push` for every finished segment, and what that command reads (the object
//! store's address in the environment, its access key and CA mounted from the user's
//! Secrets).

use k8s_openapi::api::core::v1::{EnvVar, KeyToPath, SecretProjection, VolumeProjection};

use super::Cluster;
use crate::api::BackupSpec;
use crate::pod_contract::{
    env as var, S3_ACCESS_KEY_ID_PATH, S3_CA_PATH, S3_SECRET_ACCESS_KEY_PATH, SECRETS_DIR,
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

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// The environment of `geodb wal-push` / `wal-fetch` (inherited from the agent through
/// PostgreSQL).
pub fn env_vars(cluster: &Cluster) -> Vec<EnvVar> {
    let Some(BackupSpec {
        object_store: store,
        compression,
        ..
    }) = &cluster.spec.backup
    else {
        return Vec::new();
    };
    let mut vars = vec![
        env(var::S3_ENDPOINT, store.endpoint.clone()),
        env(var::S3_BUCKET, store.bucket.clone()),
        env(
            var::S3_PREFIX,
            store.path_for(&cluster.namespace, &cluster.names.cluster),
        ),
        env(var::S3_REGION, store.region.clone()),
        env(var::S3_PATH_STYLE, store.path_style.to_string()),
        env(
            var::S3_ACCESS_KEY_ID_FILE,
            format!("{SECRETS_DIR}/{S3_ACCESS_KEY_ID_PATH}"),
        ),
        env(
            var::S3_SECRET_ACCESS_KEY_FILE,
            format!("{SECRETS_DIR}/{S3_SECRET_ACCESS_KEY_PATH}"),
        ),
        env(var::WAL_COMPRESSION, compression.as_str()),
    ];
    if store.ca.is_some() {
        vars.push(env(var::S3_CA_FILE, format!("{SECRETS_DIR}/{S3_CA_PATH}")));
    }
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

/// The object store's access key (and CA) in the instance's secrets volume.
pub fn projections(cluster: &Cluster) -> Vec<VolumeProjection> {
    let Some(backup) = &cluster.spec.backup else {
        return Vec::new();
    };
    let store = &backup.object_store;
    let credentials = &store.credentials;
    let mut sources = vec![project(
        &credentials.secret_name,
        vec![
            (credentials.access_key_id_key.clone(), S3_ACCESS_KEY_ID_PATH),
            (
                credentials.secret_access_key_key.clone(),
                S3_SECRET_ACCESS_KEY_PATH,
            ),
        ],
    )];
    if let Some(ca) = &store.ca {
        sources.push(project(&ca.secret_name, vec![(ca.key.clone(), S3_CA_PATH)]));
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
}
