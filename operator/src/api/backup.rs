//! Backups: `spec.backup`, continuous WAL archiving to an S3-compatible object store
//! (AWS S3, MinIO, SeaweedFS, ...).

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Continuous archiving of the primary's WAL, by `geodb wal-push` as PostgreSQL's
/// `archive_command`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// Where the archive goes.
    pub object_store: ObjectStoreSpec,

    /// A quiet primary switches to a new WAL segment after this many seconds, so that
    /// what it committed is archived within about that long (the recovery point).
    #[serde(default = "default_archive_timeout_seconds")]
    #[schemars(range(min = 10, max = 3600))]
    pub archive_timeout_seconds: i32,

    /// Compression of the archived WAL segments and of base backups.
    #[serde(default)]
    pub compression: Compression,

    /// When base backups run, as a cron schedule in UTC (`minute hour day month weekday`,
    /// e.g. `0 3 * * *`); none without it. A backup also runs whenever the annotation
    /// `geodb.io/backup-request` takes a new value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^(@(hourly|daily|weekly|monthly|yearly)|[0-9*/,-]+ [0-9*/,-]+ [0-9*/,?LW-]+ [0-9A-Za-z*/,-]+ [0-9A-Za-z*/,?L#-]+)$')").message("backup.schedule must be a cron schedule of five fields, such as '0 3 * * *', or @hourly/@daily/@weekly/@monthly/@yearly"))]
    pub schedule: Option<String>,

    /// Take base backups from a streaming replica when one is ready, so the primary
    /// serves only the WAL.
    #[serde(default = "default_true")]
    pub prefer_standby: bool,

    /// Which base backups (and the WAL they need) are kept; everything when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionSpec>,

    /// Logical dumps (`pg_dump` in custom format, one per database, and the roles) into
    /// the same bucket, beside the base backups: a copy that restores into any
    /// PostgreSQL of this major version or a later one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dumps: Option<DumpSpec>,
}

/// When logical dumps run and how many are kept.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DumpSpec {
    /// When dumps run, as a cron schedule in UTC; none without it. A dump also runs
    /// whenever the annotation `geodb.io/dump-request` takes a new value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^(@(hourly|daily|weekly|monthly|yearly)|[0-9*/,-]+ [0-9*/,-]+ [0-9*/,?LW-]+ [0-9A-Za-z*/,-]+ [0-9A-Za-z*/,?L#-]+)$')").message("backup.dumps.schedule must be a cron schedule of five fields, such as '0 4 * * *', or @hourly/@daily/@weekly/@monthly/@yearly"))]
    pub schedule: Option<String>,

    /// How many complete dumps are kept: after each new one, older ones beyond this
    /// count are deleted.
    #[serde(default = "default_dumps_keep")]
    #[schemars(range(min = 1, max = 1000))]
    pub keep: i32,
}

/// How long backups are kept: a recovery window, a count, or both (the union is kept).
/// The newest backup is never deleted, nor any WAL a kept backup needs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.window) || has(self.count)").message("backup.retention needs a window (such as 7d) or a count"))]
pub struct RetentionSpec {
    /// Every point inside this window stays recoverable: a number and a unit, `s`, `m`,
    /// `h` or `d` (e.g. `7d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[1-9][0-9]{0,5}[smhd]$')").message("backup.retention.window must be a number and a unit s, m, h or d, such as 7d"))]
    pub window: Option<String>,

    /// Keep at least the newest `count` base backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub count: Option<i32>,
}

/// An S3-compatible bucket and how to reach it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStoreSpec {
    /// The S3 endpoint URL, e.g. `https://s3.eu-west-1.amazonaws.com` or
    /// `https://minio.storage.svc:9000`.
    #[x_kube(validation = Rule::new("self.matches('^https?://[^\\\\s/]+(/[^\\\\s]*)?$')").message("backup.objectStore.endpoint must be an http:// or https:// URL, such as https://minio.storage.svc:9000"))]
    pub endpoint: String,

    /// The bucket; it must exist.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$')").message("backup.objectStore.bucket must be an S3 bucket name: 3 to 63 lowercase letters, digits, '.' or '-'"))]
    pub bucket: String,

    /// Path inside the bucket; `<namespace>/<name>` when unset. Two GeoDatabases must not
    /// share one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$')").message("backup.objectStore.path must be segments of letters, digits, '.', '_' or '-' separated by '/', without a leading or trailing '/'"))]
    pub path: Option<String>,

    /// The region the endpoint signs for.
    #[serde(default = "default_region")]
    #[schemars(length(min = 1, max = 64))]
    pub region: String,

    /// Path-style addressing (`endpoint/bucket/key`), as MinIO and SeaweedFS need;
    /// virtual-hosted style (`bucket.endpoint/key`) when false.
    #[serde(default = "default_true")]
    pub path_style: bool,

    /// The Secret (in the GeoDatabase's namespace) holding the access key.
    pub credentials: ObjectStoreCredentials,

    /// A Secret key holding the PEM CA bundle that signed the endpoint's certificate, for a
    /// private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<SecretKey>,
}

/// The access key of the object store, from a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStoreCredentials {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("secretName must be the name of a Secret: lowercase letters, digits, '-' and '.'"))]
    pub secret_name: String,
    /// Key of the access key id in it.
    #[serde(default = "default_access_key_id_key")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]+$')").message("a Secret key has only letters, digits, '-', '_' and '.'"))]
    pub access_key_id_key: String,
    /// Key of the secret access key in it.
    #[serde(default = "default_secret_access_key_key")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]+$')").message("a Secret key has only letters, digits, '-', '_' and '.'"))]
    pub secret_access_key_key: String,
}

/// One key of a Secret in the GeoDatabase's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKey {
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("secretName must be the name of a Secret: lowercase letters, digits, '-' and '.'"))]
    pub secret_name: String,
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]+$')").message("a Secret key has only letters, digits, '-', '_' and '.'"))]
    pub key: String,
}

/// Compression of archived WAL.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum Compression {
    #[default]
    Zstd,
    None,
}

impl Compression {
    /// The value of `GEODB_WAL_COMPRESSION`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
            Self::None => "none",
        }
    }
}

impl ObjectStoreSpec {
    /// The path inside the bucket.
    pub fn path_for(&self, namespace: &str, name: &str) -> String {
        self.path
            .clone()
            .unwrap_or_else(|| format!("{namespace}/{name}"))
    }
}

fn default_archive_timeout_seconds() -> i32 {
    60
}

fn default_dumps_keep() -> i32 {
    7
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

fn default_true() -> bool {
    true
}

fn default_access_key_id_key() -> String {
    "accessKeyId".to_owned()
}

fn default_secret_access_key_key() -> String {
    "secretAccessKey".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_the_default_path() {
        let spec: BackupSpec = serde_json::from_value(serde_json::json!({
            "objectStore": {"endpoint": "https://s3.local:8333", "bucket": "geo-backups",
                            "credentials": {"secretName": "s3"}}}))
        .unwrap();
        assert_eq!(spec.archive_timeout_seconds, 60);
        assert_eq!(spec.compression, Compression::Zstd);
        assert!(spec.object_store.path_style);
        assert_eq!(spec.object_store.region, "us-east-1");
        assert_eq!(
            spec.object_store.credentials.access_key_id_key,
            "accessKeyId"
        );
        assert_eq!(spec.object_store.path_for("ns", "geo"), "ns/geo");
        assert_eq!(spec.dumps, None);
        let dumps: DumpSpec = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!((dumps.schedule, dumps.keep), (None, 7));
    }
}
