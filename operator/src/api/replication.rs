//! Streaming replication and failover: `spec.replication`.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

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

impl ReplicationSpec {
    /// How long the primary must be unreachable before a failover.
    pub fn failover_delay(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::try_from(self.failover_delay_seconds).unwrap_or(5))
    }
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
