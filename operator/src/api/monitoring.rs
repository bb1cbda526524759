//! `spec.monitoring`: what the instance pods' exporter serves beyond its built-in metrics,
//! and the Prometheus Operator objects the operator keeps.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Metrics of the GeoDatabase. Every instance pod serves `/metrics` on its `agent` port
/// (8008), selected by the headless `<name>-metrics` Service, and every pooler pod on its
/// `metrics` port (9127). Slow statements are those slower than the `log_min_duration_statement`
/// parameter (`postgresql.parameters`, default `100ms`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// A ConfigMap in the namespace whose key `queries.yaml` lists user-defined metric
    /// queries (docs/monitoring.md). A missing ConfigMap or a file that does not parse
    /// makes the GeoDatabase Degraded. Changes to its contents reach the pods without a
    /// restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")
    )]
    pub custom_queries: Option<String>,

    /// Keep a `PodMonitor` (monitoring.coreos.com/v1) for the instance and pooler pods
    /// when the Prometheus Operator's CRDs are installed. With `network.policy`, the
    /// Prometheus pods' namespace must be in `network.metricsNamespaces`.
    #[serde(default = "default_true")]
    pub pod_monitor: bool,
}

fn default_true() -> bool {
    true
}

impl Default for MonitoringSpec {
    fn default() -> Self {
        Self {
            custom_queries: None,
            pod_monitor: true,
        }
    }
}
