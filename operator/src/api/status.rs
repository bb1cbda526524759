//! Observed state: `status`, written only by the operator.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
    /// The base backups in the object store (`spec.backup`), as last read from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups: Option<BackupsStatus>,
    /// The extensions of the application database, as last checked on the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgis: Option<super::PostgisStatus>,
    /// The last schema migration run (`spec.migrations`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrations: Option<super::MigrationsStatus>,
    /// The seed run of the current `spec.seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<super::SeedStatus>,
    /// The newest finished maintenance runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<super::MaintenanceStatus>,
}

/// What the bucket holds: complete base backups (those with a manifest) and the WAL.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupsStatus {
    /// Complete base backups.
    pub count: i32,
    /// The newest complete backup's id and when it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_time: Option<String>,
    /// The earliest time a recovery can target (the oldest backup's end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_recoverability_point: Option<String>,
    /// The newest archived WAL's time: the latest a recovery can reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_archived_time: Option<String>,
    /// Bytes stored for the complete backups.
    pub size_bytes: i64,
    /// Complete logical dumps (`spec.backup.dumps`), and the newest one's id and end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dumps: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_dump: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_dump_time: Option<String>,
    /// When the bucket was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_at: Option<String>,
    /// Why the last read failed (the figures above are from the read before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl GeoDatabaseStatus {
    /// The instance every instance must follow: the target of a transition under way,
    /// else the current primary. `None` before the first primary is recorded.
    pub fn chosen_primary(&self) -> Option<&str> {
        self.target_primary
            .as_deref()
            .or(self.current_primary.as_deref())
    }

    /// The condition of `type_`, if the status has one.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        find_condition(&self.conditions, type_)
    }
}

/// The condition of `type_` in `conditions`.
pub fn find_condition<'c>(conditions: &'c [Condition], type_: &str) -> Option<&'c Condition> {
    conditions.iter().find(|c| c.type_ == type_)
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
