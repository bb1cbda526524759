//! The `GeoDatabase` API (`geodb.io/v1alpha1`).
//!
//! Every field here is honoured by the reconciler. Whatever the API server can reject
//! is rejected in the schema (ranges, enums, patterns) or with CEL rules
//! (`x-kubernetes-validations`); what only the operator can judge is reported as a
//! `Degraded` condition (see `controller::validate`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// PostGIS image used when `spec.image` is not set: PostgreSQL 17 with PostGIS 3.5,
/// PgBouncer and the `geodb` binary for in-pod duties.
pub const DEFAULT_IMAGE: &str = "geodb/postgis:17-3.5";

/// PostgreSQL settings the operator owns; users may not set them in
/// `spec.postgresql.parameters` (the schema refuses them).
pub const RESERVED_PARAMETERS: &[&str] = &[
    "listen_addresses",
    "port",
    "data_directory",
    "config_file",
    "hba_file",
    "ident_file",
    "external_pid_file",
    "unix_socket_directories",
    "unix_socket_group",
    "unix_socket_permissions",
    "wal_level",
    "hot_standby",
    "archive_mode",
    "archive_command",
    "archive_library",
    "restore_command",
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_timeline",
    "primary_conninfo",
    "primary_slot_name",
    "promote_trigger_file",
    "synchronous_standby_names",
    "password_encryption",
    "ssl",
    "ssl_cert_file",
    "ssl_key_file",
    "ssl_ca_file",
    "logging_collector",
    "log_destination",
];

/// CEL rule refusing the reserved parameters; kept in sync with [`RESERVED_PARAMETERS`] by a test.
const RESERVED_PARAMETERS_RULE: &str = "self.all(k, !(k in ['listen_addresses', 'port', 'data_directory', 'config_file', 'hba_file', 'ident_file', 'external_pid_file', 'unix_socket_directories', 'unix_socket_group', 'unix_socket_permissions', 'wal_level', 'hot_standby', 'archive_mode', 'archive_command', 'archive_library', 'restore_command', 'recovery_target', 'recovery_target_lsn', 'recovery_target_name', 'recovery_target_time', 'recovery_target_xid', 'recovery_target_timeline', 'primary_conninfo', 'primary_slot_name', 'promote_trigger_file', 'synchronous_standby_names', 'password_encryption', 'ssl', 'ssl_cert_file', 'ssl_key_file', 'ssl_ca_file', 'logging_collector', 'log_destination']))";

/// A PostGIS cluster: one primary, `instances - 1` streaming replicas and a PgBouncer pooler.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "geodb.io",
    version = "v1alpha1",
    kind = "GeoDatabase",
    plural = "geodatabases",
    shortname = "geodb",
    category = "all",
    namespaced,
    status = "GeoDatabaseStatus",
    derive = "PartialEq",
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 40").message("metadata.name must start with a letter, contain only lowercase letters, digits and '-', and be at most 40 characters (object names are derived from it)"),
    validation = Rule::new("!has(self.spec.primary) || (self.spec.primary.startsWith(self.metadata.name + '-') && self.spec.primary.substring(size(self.metadata.name) + 1).matches('^[1-9][0-9]*$'))").message("spec.primary must name an instance of this GeoDatabase, such as <name>-2"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Primary", type_ = "string", json_path = ".status.currentPrimary"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyInstances"),
    printcolumn(name = "Instances", type_ = "integer", json_path = ".spec.instances"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct GeoDatabaseSpec {
    /// Number of PostgreSQL instances: one primary plus `instances - 1` streaming replicas.
    #[serde(default = "default_instances")]
    #[schemars(range(min = 1, max = 9))]
    pub instances: i32,

    /// PostGIS container image. It must contain PostgreSQL, PostGIS, PgBouncer and `geodb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[^\\\\s]+$')").message("image must be a non-empty image reference without spaces"))]
    pub image: Option<String>,

    /// When the kubelet pulls the image.
    #[serde(default)]
    pub image_pull_policy: ImagePullPolicy,

    /// Data volume of each instance.
    pub storage: StorageSpec,

    /// CPU and memory of each PostgreSQL container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// PostgreSQL configuration.
    #[serde(default)]
    pub postgresql: PostgresqlSpec,

    /// The application database created at bootstrap.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("database is immutable: the application database and its owner are created once"))]
    pub database: DatabaseSpec,

    /// PgBouncer in front of the primary.
    #[serde(default)]
    pub pooler: PoolerSpec,

    /// What happens to the data volumes when the GeoDatabase is deleted or scaled down.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// The instance that should be the primary. Setting it to another instance performs a
    /// planned switchover; a target that is missing, not streaming or lagging is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 3, max = 43),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?-[1-9][0-9]*$")
    )]
    pub primary: Option<String>,

    /// Streaming replication and failover.
    #[serde(default)]
    pub replication: ReplicationSpec,
}

/// Streaming replication and failover.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationSpec {
    /// Every commit waits until at least one replica has flushed it to disk, so a
    /// failover loses no acknowledged commit. Writes stop while no replica is connected.
    #[serde(default)]
    pub synchronous: bool,

    /// A replica further behind the primary than this many bytes of WAL leaves the `-ro`
    /// Service, and is not promoted by a failover.
    #[serde(default = "default_max_lag_bytes")]
    #[schemars(range(min = 0, max = 1_099_511_627_776_i64))]
    pub max_lag_bytes: i64,

    /// How long the primary must be unreachable before the operator fails over.
    #[serde(default = "default_failover_delay_seconds")]
    #[schemars(range(min = 3, max = 300))]
    pub failover_delay_seconds: i32,

    /// Allow a failover to promote the most advanced replica even when it is more than
    /// `maxLagBytes` behind the last position seen on the primary; the commits it never
    /// received are lost. For a human to set when the operator refuses to promote.
    #[serde(default)]
    pub force_failover: bool,
}

impl Default for ReplicationSpec {
    fn default() -> Self {
        Self {
            synchronous: false,
            max_lag_bytes: default_max_lag_bytes(),
            failover_delay_seconds: default_failover_delay_seconds(),
            force_failover: false,
        }
    }
}

fn default_max_lag_bytes() -> i64 {
    16 * 1024 * 1024
}

fn default_failover_delay_seconds() -> i32 {
    5
}

fn default_instances() -> i32 {
    1
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl ImagePullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// Persistent volume of each instance.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("quantity(self.size).compareTo(quantity(oldSelf.size)) >= 0").message("storage.size cannot shrink"))]
#[x_kube(validation = Rule::new("has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)").message("storage.storageClassName is immutable"))]
pub struct StorageSpec {
    /// Size of each data volume, e.g. `10Gi`; it may grow, never shrink.
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).compareTo(quantity('64Mi')) >= 0").message("storage.size must be a quantity of at least 64Mi, such as 10Gi"))]
    pub size: String,

    /// StorageClass of the data volumes; the cluster default when unset. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

/// PostgreSQL configuration.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostgresqlSpec {
    /// Settings written to `postgresql.conf`, e.g. `work_mem: 64MB`. Settings the operator
    /// manages (listening, replication, archiving, TLS files) are refused.
    #[serde(default)]
    #[schemars(schema_with = "parameters_schema")]
    #[x_kube(validation = Rule::new(RESERVED_PARAMETERS_RULE).message("postgresql.parameters must not set settings the operator manages (listen_addresses, port, data_directory, hba_file, wal_level, hot_standby, archive_*, restore_command, recovery_target*, primary_conninfo, primary_slot_name, synchronous_standby_names, password_encryption, ssl*, logging_collector, log_destination, ...)"))]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[a-z][a-z0-9_.]*$'))").message("postgresql.parameters keys must be lowercase setting names such as work_mem"))]
    pub parameters: BTreeMap<String, String>,
}

/// Parameter values are checked by pattern rather than CEL: a CEL rule over every value
/// of a map is too costly for the API server's CEL budget.
fn parameters_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 200,
        "additionalProperties": {
            "type": "string",
            "maxLength": 1024,
            "pattern": "^[^'\\n\\r]*$"
        }
    })
}

/// The application database and its owner.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// Database name.
    #[serde(default = "default_database_name")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z_][a-z0-9_]{0,62}$') && !(self in ['postgres', 'template0', 'template1'])").message("database.name must be a lowercase identifier (letters, digits, '_'; at most 63) and not postgres, template0 or template1"))]
    pub name: String,

    /// Role that owns the database; the application connects as this role.
    #[serde(default = "default_database_owner")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z_][a-z0-9_]{0,62}$') && !(self in ['postgres', 'streaming_replica']) && !self.startsWith('pg_')").message("database.owner must be a lowercase identifier, not postgres, streaming_replica or pg_*"))]
    pub owner: String,
}

impl Default for DatabaseSpec {
    fn default() -> Self {
        Self {
            name: default_database_name(),
            owner: default_database_owner(),
        }
    }
}

fn default_database_name() -> String {
    "app".to_owned()
}

fn default_database_owner() -> String {
    "app".to_owned()
}

/// PgBouncer pooler.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.defaultPoolSize <= self.maxClientConn").message("pooler.defaultPoolSize must not exceed pooler.maxClientConn"))]
pub struct PoolerSpec {
    /// Run PgBouncer in front of the primary.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// PgBouncer pods.
    #[serde(default = "default_pooler_instances")]
    #[schemars(range(min = 1, max = 10))]
    pub instances: i32,

    /// Pooling mode; `transaction` suits most applications.
    #[serde(default)]
    pub pool_mode: PoolMode,

    /// Client connections each PgBouncer accepts.
    #[serde(default = "default_max_client_conn")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_client_conn: i32,

    /// Server connections per user/database pair in each PgBouncer.
    #[serde(default = "default_pool_size")]
    #[schemars(range(min = 1, max = 10000))]
    pub default_pool_size: i32,
}

impl Default for PoolerSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            instances: default_pooler_instances(),
            pool_mode: PoolMode::default(),
            max_client_conn: default_max_client_conn(),
            default_pool_size: default_pool_size(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_pooler_instances() -> i32 {
    1
}
fn default_max_client_conn() -> i32 {
    1000
}
fn default_pool_size() -> i32 {
    20
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    Session,
    #[default]
    Transaction,
    Statement,
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Transaction => "transaction",
            Self::Statement => "statement",
        }
    }
}

/// What happens to data volumes (PVCs) of removed instances.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the PVCs; a new GeoDatabase of the same name finds its data again.
    #[default]
    Retain,
    /// Delete the PVCs with the GeoDatabase (and with instances removed by a scale-down).
    Delete,
}

/// Observed state, written only by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GeoDatabaseStatus {
    /// Summary: Pending, Creating, Ready, Degraded or Deleting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Ready, Progressing and Degraded, each with a reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The instance that is the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_primary: Option<String>,
    /// The instance chosen to be the primary. It differs from `currentPrimary` only while
    /// a failover or switchover is under way; instances follow it, so it is written before
    /// anything is promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_primary: Option<String>,
    /// Timeline of the primary; every promotion starts a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<i64>,
    /// The last failover or switchover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<FailoverRecord>,
    /// Failovers and switchovers since the GeoDatabase was created.
    #[serde(default)]
    pub failovers: i32,
    /// The last `spec.primary` the operator acted on (switched over to, or refused), so
    /// a value left in the spec does not undo a later automatic failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_primary_request: Option<String>,
    /// Instances whose PostgreSQL container is ready.
    #[serde(default)]
    pub ready_instances: i32,
    /// Every instance with its role and readiness.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceStatus>,
    /// Names of the Secrets the operator manages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<SecretNames>,
    /// Names of the Services the operator manages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<ServiceNames>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    Pending,
    Creating,
    Ready,
    Degraded,
    Deleting,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Replica => "replica",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// Instance name; also the name of its StatefulSet and headless Service.
    pub name: String,
    pub role: Role,
    /// Pod of the instance, when it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub ready: bool,
    /// PostgreSQL answered the operator's last probe.
    #[serde(default)]
    pub reachable: bool,
    /// Replica only: its WAL receiver is streaming from the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streaming: Option<bool>,
    /// Replica only: it is in the `-ro` Service (streaming and within `maxLagBytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_reads: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<i64>,
    /// Primary: current WAL position. Replica: last position received and flushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_lsn: Option<String>,
    /// Replica only: last position replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_lsn: Option<String>,
    /// Replica only: WAL bytes between the primary's position and the replayed position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<i64>,
    /// Replica only: age of the last replayed transaction while WAL is waiting for replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
}

/// One failover or switchover.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverRecord {
    /// Failover (the primary failed) or Switchover (asked for in `spec.primary`).
    pub kind: FailoverKind,
    pub from: String,
    pub to: String,
    /// Why it started.
    pub reason: String,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// WAL position last seen on the old primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_primary_lsn: Option<String>,
    /// Position the promoted replica had received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_lsn: Option<String>,
    /// Bytes of WAL between the two: what an asynchronous failover may have lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_bytes: Option<i64>,
    /// Timeline the new primary runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum FailoverKind {
    Failover,
    Switchover,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretNames {
    pub superuser: String,
    pub replication: String,
    /// Credentials of the application role (`username`, `password`).
    pub app: String,
    /// Connection details (`uri`, `host`, `port`, `user`, `password`, `dbname`) to the primary.
    pub app_rw: String,
    /// Connection details to the replicas.
    pub app_ro: String,
    /// Connection details through PgBouncer, when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_pooler: Option<String>,
    /// Connection details through the read-only PgBouncer (to the replicas), when enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_pooler_ro: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceNames {
    pub rw: String,
    pub ro: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooler: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooler_ro: Option<String>,
}

impl GeoDatabaseSpec {
    pub fn image(&self) -> &str {
        self.image.as_deref().unwrap_or(DEFAULT_IMAGE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn reserved_rule_lists_every_reserved_parameter() {
        for name in RESERVED_PARAMETERS {
            assert!(
                RESERVED_PARAMETERS_RULE.contains(&format!("'{name}'")),
                "{name} missing from the CEL rule"
            );
        }
        assert_eq!(
            RESERVED_PARAMETERS_RULE.matches('\'').count() / 2,
            RESERVED_PARAMETERS.len()
        );
    }

    #[test]
    fn crd_has_names_columns_and_rules() {
        let crd = GeoDatabase::crd();
        let json = serde_json::to_string(&crd).unwrap();
        assert_eq!(crd.spec.names.short_names, Some(vec!["geodb".to_owned()]));
        assert!(json.contains("storage.size cannot shrink"));
        assert!(json.contains("\"jsonPath\":\".status.currentPrimary\""));
    }

    #[test]
    fn minimal_spec_gets_defaults() {
        let spec: GeoDatabaseSpec =
            serde_json::from_value(serde_json::json!({"storage": {"size": "1Gi"}})).unwrap();
        assert_eq!(spec.instances, 1);
        assert_eq!(spec.pooler.pool_mode, PoolMode::Transaction);
        assert_eq!(spec.deletion_policy, DeletionPolicy::Retain);
        assert_eq!(spec.database.name, "app");
        assert_eq!(spec.image(), DEFAULT_IMAGE);
    }
}
