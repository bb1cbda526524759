//! The extensions kept in the application database: `spec.postgis`, and what the operator
//! found there (`status.postgis`).

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Extensions the operator creates in the application database and keeps there.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostgisSpec {
    /// Extension names, created in this order (with `CASCADE`) on startup, after a
    /// restore and on every change of this list. `postgis` is always kept: it is what the
    /// `PostGISReady` condition checks. Others the image has: `postgis_topology`,
    /// `postgis_raster`, `fuzzystrmatch`, `postgis_tiger_geocoder`, `pg_stat_statements`,
    /// `pg_trgm`, `btree_gist`, `hstore`, `uuid-ossp`, ... Removing a name does not drop
    /// the extension.
    #[serde(default = "default_extensions")]
    #[schemars(schema_with = "extension_names")]
    pub extensions: Vec<String>,

    /// Update the extensions when the image brings newer versions (`ALTER EXTENSION ...
    /// UPDATE`, `postgis_extensions_upgrade()` for PostGIS), with an Event.
    #[serde(default = "default_true")]
    pub auto_update: bool,
}

fn extension_names(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": 30,
        "items": {
            "type": "string",
            "maxLength": 63,
            "pattern": "^[a-z_][a-z0-9_-]*$"
        }
    })
}

/// PostGIS, and `pg_stat_statements` for the slow-statement metrics (it is preloaded).
fn default_extensions() -> Vec<String> {
    vec!["postgis".to_owned(), "pg_stat_statements".to_owned()]
}

fn default_true() -> bool {
    true
}

impl Default for PostgisSpec {
    fn default() -> Self {
        Self {
            extensions: default_extensions(),
            auto_update: true,
        }
    }
}

impl PostgisSpec {
    /// The extensions to keep: `postgis` first, then the listed ones, each once.
    pub fn wanted(&self) -> Vec<String> {
        let mut wanted = vec!["postgis".to_owned()];
        for name in &self.extensions {
            if !wanted.contains(name) {
                wanted.push(name.clone());
            }
        }
        wanted
    }
}

/// What the last check of the application database found.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgisStatus {
    /// `postgis_full_version()`, as the primary answered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_version: Option<String>,
    /// Each kept extension and its installed version.
    #[serde(default)]
    pub extensions: Vec<ExtensionStatus>,
    /// A digest of what was checked (the list, the database, the primary, its timeline
    /// and the image): a change makes the operator check again.
    #[serde(default)]
    pub checked: String,
    /// Whether every extension is in place and a `geometry` cast worked.
    #[serde(default)]
    pub ready: bool,
    /// What is wrong when not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Extensions the image does not have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unavailable: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionStatus {
    pub name: String,
    pub version: String,
}
