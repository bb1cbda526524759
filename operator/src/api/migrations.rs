//! Schema migrations: `spec.migrations`, and what the last run did (`status.migrations`).

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Job against the primary, run again whenever these inputs (or the ConfigMaps'
/// contents) change. Exactly one of `configMaps` and `image`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.configMaps) && size(self.configMaps) > 0) != has(self.image)").message("migrations needs exactly one of configMaps (built-in: versioned SQL files) and image (your own migration image)"))]
pub struct MigrationsSpec {
    /// Built-in mode: ConfigMaps in this namespace whose keys are versioned SQL files,
    /// `V<version>__<description>.sql`, applied by `geodb migrate` in version order, each
    /// in one transaction, recorded with its checksum in `geodb_migrations`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "config_map_names")]
    pub config_maps: Vec<String>,

    /// Image mode: your image and command (an Alembic project, say). It gets `PGHOST`,
    /// `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`, `PGSSLMODE=verify-full` and
    /// `PGSSLROOTCERT` for the primary, as the database owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<MigrationImage>,

    /// Seconds a run may take before it is stopped (and reported failed).
    #[serde(default = "default_deadline")]
    #[schemars(range(min = 30, max = 86400))]
    pub deadline_seconds: i32,
}

fn config_map_names(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": 20,
        "items": {
            "type": "string",
            "maxLength": 253,
            "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
        }
    })
}

fn default_deadline() -> i32 {
    1800
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MigrationImage {
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^\S+$"))]
    pub image: String,
    /// The entrypoint; the image's own when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub args: Vec<String>,
}

/// How the last run ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MigrationOutcome {
    Running,
    Succeeded,
    Failed,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationsStatus {
    /// The inputs' digest the run was for.
    pub hash: String,
    /// The Job that ran it.
    pub job: String,
    pub outcome: MigrationOutcome,
    /// The highest applied version (built-in mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Versions this run applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applied: Vec<String>,
    /// What failed, in the migration's or the server's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Demo data for the sample schema (`config/samples/migrations`): one Job running
/// `geodb seed` against the primary once these settings are new, after the migrations
/// succeeded. It adds rows; it never empties a table.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SeedSpec {
    /// Random locations to load in Ho Chi Minh City and Hanoi, with their images and
    /// moderation logs.
    #[schemars(range(min = 1, max = 10_000_000))]
    pub locations: u64,
    /// Load the same rows on every cluster with the same value (ids aside).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub random_seed: Option<u64>,
    /// Seconds the load may take before it is stopped (and reported failed).
    #[serde(default = "default_deadline")]
    #[schemars(range(min = 30, max = 86400))]
    pub deadline_seconds: i32,
}

/// What the seed Job of the current settings did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeedStatus {
    /// The settings' digest the run was for.
    pub hash: String,
    /// The Job that ran it.
    pub job: String,
    pub outcome: MigrationOutcome,
    /// Rows loaded (once it succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locations: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moderation_logs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
