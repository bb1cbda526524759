//! The `GeoDatabase` API (`geodb.io/v1alpha1`).
//!
//! Every field here is honoured by the reconciler. Whatever the API server can reject
//! is rejected in the schema (ranges, enums, patterns) or with CEL rules
//! (`x-kubernetes-validations`); what only the operator can judge is reported as a
//! `Degraded` condition (see `controller::validate`).

mod backup;
mod bootstrap;
mod maintenance;
mod migrations;
mod monitoring;
mod network;
mod pooler;
mod postgis;
mod postgresql;
mod replication;
mod scheduling;
mod status;

pub use backup::{
    BackupSpec, Compression, DumpSpec, ObjectStoreCredentials, ObjectStoreSpec, RetentionSpec,
    SecretKey,
};
pub use bootstrap::{BootstrapSpec, RecoverySpec, RecoveryTarget};
pub use maintenance::{
    MaintenanceSpec, MaintenanceStatus, VacuumRun, VacuumSpec, VacuumTable, AUTOVACUUM_SETTINGS,
};
pub use migrations::{
    MigrationImage, MigrationOutcome, MigrationsSpec, MigrationsStatus, SeedSpec, SeedStatus,
};
pub use monitoring::MonitoringSpec;
pub use network::{NetworkSpec, TlsSpec};
pub use pooler::{PoolMode, PoolerSpec};
pub use postgis::{ExtensionStatus, PostgisSpec, PostgisStatus};
pub use postgresql::{
    is_reserved, unknown_preload_libraries, unwritable_value, PostgresqlSpec, PRELOAD_LIBRARIES,
};
pub use replication::ReplicationSpec;
pub use scheduling::{AntiAffinity, SchedulingSpec, HOSTNAME_TOPOLOGY_KEY, ZONE_TOPOLOGY_KEY};
pub use status::{
    find_condition, BackupsStatus, FailoverKind, FailoverRecord, GeoDatabaseStatus, InstanceStatus,
    Phase, Role, SecretNames, ServiceNames,
};

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// PostGIS image used when `spec.image` is not set: PostgreSQL 17 with PostGIS 3.5,
/// PgBouncer and the `geodb` binary for in-pod duties.
pub const DEFAULT_IMAGE: &str = "geodb/postgis:17-3.5";

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
    validation = Rule::new("!(has(self.spec.replication) && has(self.spec.replication.synchronous) && self.spec.replication.synchronous) || !(has(self.spec.postgresql) && has(self.spec.postgresql.parameters) && 'synchronous_commit' in self.spec.postgresql.parameters) || self.spec.postgresql.parameters['synchronous_commit'] in ['on', 'remote_apply']").message("postgresql.parameters.synchronous_commit must be on or remote_apply when replication.synchronous is true: a lower level lets a failover lose acknowledged commits"),
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

    /// The extensions kept in the application database (PostGIS and others).
    #[serde(default)]
    pub postgis: PostgisSpec,

    /// Scheduled maintenance of the application database (VACUUM).
    #[serde(default)]
    pub maintenance: MaintenanceSpec,

    /// Schema migrations, run as a Job against the primary when their inputs change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrations: Option<MigrationsSpec>,

    /// Demo data: random locations loaded into the sample schema once, by a Job, after
    /// the migrations succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<SeedSpec>,

    /// Metrics: user-defined metric queries and the Prometheus Operator objects.
    #[serde(default)]
    pub monitoring: MonitoringSpec,

    /// Spreading of the instances and the poolers over nodes and zones.
    #[serde(default)]
    pub scheduling: SchedulingSpec,

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

    /// Who may reach the cluster's pods.
    #[serde(default)]
    pub network: NetworkSpec,

    /// The server certificate: issued by the GeoDatabase's own CA unless a Secret is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,

    /// Continuous WAL archiving and base backups to an S3-compatible object store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,

    /// Where a new cluster's data comes from: initdb, or another cluster's backups.
    /// Immutable: it is read once, when the cluster is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("bootstrap is immutable: it is read once, when the cluster is created"))]
    pub bootstrap: Option<BootstrapSpec>,
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
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("storage.storageClassName must be the name of a StorageClass: lowercase letters, digits, '-' and '.'"))]
    pub storage_class_name: Option<String>,
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

/// What happens to data volumes (PVCs) of removed instances.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the PVCs; a new GeoDatabase of the same name finds its data again.
    #[default]
    Retain,
    /// Delete the PVCs with the GeoDatabase (and with instances removed by a scale-down).
    Delete,
}

impl GeoDatabaseSpec {
    pub fn image(&self) -> &str {
        self.image.as_deref().unwrap_or(DEFAULT_IMAGE)
    }

    /// Every object store the spec names, with the field that names it.
    pub fn object_stores(&self) -> Vec<(&'static str, &ObjectStoreSpec)> {
        let own = self
            .backup
            .as_ref()
            .map(|b| ("backup.objectStore", &b.object_store));
        let source = self
            .bootstrap
            .as_ref()
            .and_then(|b| b.recovery.as_ref())
            .map(|r| ("bootstrap.recovery.source", &r.source));
        own.into_iter().chain(source).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

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
        assert_eq!(spec.scheduling.anti_affinity, AntiAffinity::Preferred);
        assert_eq!(spec.scheduling.topology_key, HOSTNAME_TOPOLOGY_KEY);
    }
}
