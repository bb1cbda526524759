//! PgBouncer: `spec.pooler`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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

    /// Further server connections a pool may open when a client has waited 5 s.
    #[serde(default)]
    #[schemars(range(min = 0, max = 10000))]
    pub reserve_pool_size: i32,

    /// Seconds an idle server connection is kept (0: forever).
    #[serde(default = "default_server_idle_timeout")]
    #[schemars(range(min = 0, max = 86400))]
    pub server_idle_timeout: i32,

    /// Seconds a client may wait for a server connection before it is refused (0:
    /// forever).
    #[serde(default = "default_query_wait_timeout")]
    #[schemars(range(min = 0, max = 86400))]
    pub query_wait_timeout: i32,

    /// Seconds after which a released server connection is closed and opened anew (0:
    /// never).
    #[serde(default = "default_server_lifetime")]
    #[schemars(range(min = 0, max = 604800))]
    pub server_lifetime: i32,

    /// Named prepared statements PgBouncer tracks per client connection and prepares
    /// again on whichever server connection runs them, so drivers that prepare at the
    /// protocol level work in transaction mode (0: off). Needs PgBouncer 1.21 or later in
    /// the image; an older one runs without it (`geodb pooler` logs so).
    #[serde(default = "default_max_prepared_statements")]
    #[schemars(range(min = 0, max = 10000))]
    pub max_prepared_statements: i32,

    /// CPU and memory of each PgBouncer container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Further PgBouncer settings, from a list of those that only tune pooling, timeouts,
    /// limits and logging; the operator's own (listening, authentication, TLS, the pool
    /// settings above) are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "settings_schema")]
    pub settings: BTreeMap<String, String>,
}

/// The PgBouncer settings `pooler.settings` may hold.
pub const POOLER_SETTINGS: [&str; 20] = [
    "application_name_add_host",
    "client_idle_timeout",
    "client_login_timeout",
    "disable_pqexec",
    "idle_transaction_timeout",
    "listen_backlog",
    "log_pooler_errors",
    "max_db_connections",
    "max_user_connections",
    "min_pool_size",
    "pkt_buf",
    "query_timeout",
    "reserve_pool_timeout",
    "sbuf_loopcnt",
    "server_connect_timeout",
    "server_round_robin",
    "stats_period",
    "tcp_keepalive",
    "tcp_keepcnt",
    "tcp_keepidle",
];

/// Known keys only, and numbers (every listed setting takes one: seconds, counts,
/// sizes, 0 or 1), which cannot break the ini file.
fn settings_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let allowed = POOLER_SETTINGS
        .iter()
        .map(|k| format!("'{k}'"))
        .collect::<Vec<_>>()
        .join(", ");
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 30,
        "additionalProperties": {
            "type": "string",
            "maxLength": 20,
            "pattern": "^[0-9]+(\\.[0-9]+)?$"
        },
        "x-kubernetes-validations": [{
            "rule": format!("self.all(k, k in [{allowed}])"),
            "message": format!("pooler.settings may only hold {}", POOLER_SETTINGS.join(", "))
        }]
    })
}

impl Default for PoolerSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            instances: default_pooler_instances(),
            pool_mode: PoolMode::default(),
            max_client_conn: default_max_client_conn(),
            default_pool_size: default_pool_size(),
            reserve_pool_size: 0,
            server_idle_timeout: default_server_idle_timeout(),
            query_wait_timeout: default_query_wait_timeout(),
            server_lifetime: default_server_lifetime(),
            max_prepared_statements: default_max_prepared_statements(),
            resources: None,
            settings: BTreeMap::new(),
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
fn default_server_idle_timeout() -> i32 {
    600
}
fn default_query_wait_timeout() -> i32 {
    120
}
fn default_server_lifetime() -> i32 {
    3600
}
fn default_max_prepared_statements() -> i32 {
    200
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
