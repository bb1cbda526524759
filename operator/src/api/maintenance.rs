//! Scheduled maintenance of the application database: `spec.maintenance`, and the last
//! run (`status.maintenance`).

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceSpec {
    /// `VACUUM (ANALYZE)` on a schedule (autovacuum stays on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vacuum: Option<VacuumSpec>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VacuumSpec {
    /// When it runs, as a cron schedule in UTC. A run also starts whenever the annotation
    /// `geodb.io/vacuum-request` takes a new value.
    #[x_kube(validation = Rule::new("self.matches('^(@(hourly|daily|weekly|monthly|yearly)|[0-9*/,-]+ [0-9*/,-]+ [0-9*/,?LW-]+ [0-9A-Za-z*/,-]+ [0-9A-Za-z*/,?L#-]+)$')").message("maintenance.vacuum.schedule must be a cron schedule of five fields, such as '30 2 * * *', or @hourly/@daily/@weekly/@monthly/@yearly"))]
    pub schedule: String,

    /// Tables (`name` or `schema.name`) to vacuum; every user table when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "table_names")]
    pub tables: Vec<String>,

    /// Seconds a table's VACUUM waits for its lock; a table the application holds
    /// longer is skipped (and said so), never queued in front of the application.
    #[serde(default = "default_lock_timeout")]
    #[schemars(range(min = 1, max = 600))]
    pub lock_timeout_seconds: i32,

    /// Per-table autovacuum settings, set on each run (`ALTER TABLE ... SET (...)`):
    /// table to settings, keys from `autovacuum_enabled`, `autovacuum_vacuum_threshold`,
    /// `autovacuum_vacuum_scale_factor`, `autovacuum_vacuum_insert_threshold`,
    /// `autovacuum_vacuum_insert_scale_factor`, `autovacuum_analyze_threshold`,
    /// `autovacuum_analyze_scale_factor`, `autovacuum_vacuum_cost_delay`,
    /// `autovacuum_vacuum_cost_limit`; values are numbers (or true/false).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "autovacuum_schema")]
    #[x_kube(validation = Rule::new("self.all(t, t.matches('^[a-z_][a-z0-9_$]*([.][a-z_][a-z0-9_$]*)?$') && self[t].all(k, k in ['autovacuum_enabled', 'autovacuum_vacuum_threshold', 'autovacuum_vacuum_scale_factor', 'autovacuum_vacuum_insert_threshold', 'autovacuum_vacuum_insert_scale_factor', 'autovacuum_analyze_threshold', 'autovacuum_analyze_scale_factor', 'autovacuum_vacuum_cost_delay', 'autovacuum_vacuum_cost_limit']))").message("maintenance.vacuum.autovacuum: keys are table names (name or schema.name) and each table's settings are autovacuum settings only (autovacuum_enabled, autovacuum_vacuum_threshold, autovacuum_vacuum_scale_factor, autovacuum_vacuum_insert_threshold, autovacuum_vacuum_insert_scale_factor, autovacuum_analyze_threshold, autovacuum_analyze_scale_factor, autovacuum_vacuum_cost_delay, autovacuum_vacuum_cost_limit)"))]
    pub autovacuum: BTreeMap<String, BTreeMap<String, String>>,
}

/// The per-table settings `maintenance.vacuum.autovacuum` may hold.
pub const AUTOVACUUM_SETTINGS: [&str; 9] = [
    "autovacuum_enabled",
    "autovacuum_vacuum_threshold",
    "autovacuum_vacuum_scale_factor",
    "autovacuum_vacuum_insert_threshold",
    "autovacuum_vacuum_insert_scale_factor",
    "autovacuum_analyze_threshold",
    "autovacuum_analyze_scale_factor",
    "autovacuum_vacuum_cost_delay",
    "autovacuum_vacuum_cost_limit",
];

const TABLE_PATTERN: &str = "^[a-z_][a-z0-9_$]*([.][a-z_][a-z0-9_$]*)?$";

fn table_names(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": 100,
        "items": {"type": "string", "maxLength": 127, "pattern": TABLE_PATTERN}
    })
}

fn autovacuum_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 100,
        "additionalProperties": {
            "type": "object",
            "maxProperties": 9,
            "additionalProperties": {
                "type": "string",
                "maxLength": 20,
                "pattern": "^([0-9]+([.][0-9]+)?|true|false)$"
            }
        }
    })
}

fn default_lock_timeout() -> i32 {
    5
}

/// What the newest finished run reported.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_vacuum: Option<VacuumRun>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VacuumRun {
    /// The pod that ran it.
    #[serde(default)]
    pub pod: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// `vacuumed`, `partial` (a table skipped or failed) or `failed`.
    pub outcome: String,
    pub seconds: f64,
    #[serde(default)]
    pub tables: Vec<VacuumTable>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VacuumTable {
    pub table: String,
    pub outcome: String,
    pub seconds: f64,
    pub dead_before: i64,
    pub dead_after: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
