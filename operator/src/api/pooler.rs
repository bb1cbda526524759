//! PgBouncer: `spec.pooler`.

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
