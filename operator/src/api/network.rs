//! Who may reach the cluster's pods: `spec.network`.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// A NetworkPolicy in front of the instances and the poolers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// Admit only the cluster's own pods, the operator, pods of the GeoDatabase's
    /// namespace and those of `allowedNamespaces` (to PostgreSQL and PgBouncer). Enforced
    /// by network plugins that implement NetworkPolicy.
    #[serde(default = "default_policy")]
    pub policy: bool,

    /// Further namespaces whose pods may connect to PostgreSQL and PgBouncer.
    #[serde(default)]
    #[schemars(schema_with = "namespace_names")]
    pub allowed_namespaces: Vec<String>,

    /// Namespaces whose pods (Prometheus) may scrape the metrics ports: the instances'
    /// agent port and the poolers' metrics port, never the poolers' control port.
    #[serde(default)]
    #[schemars(schema_with = "namespace_names")]
    pub metrics_namespaces: Vec<String>,
}

/// By pattern, not CEL: a CEL rule over every item costs too much of the CRD's budget.
fn namespace_names(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": 50,
        "items": {
            "type": "string",
            "maxLength": 63,
            "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
        }
    })
}

impl Default for NetworkSpec {
    fn default() -> Self {
        Self {
            policy: default_policy(),
            allowed_namespaces: Vec::new(),
            metrics_namespaces: Vec::new(),
        }
    }
}

fn default_policy() -> bool {
    true
}

/// Certificates the user brings instead of the ones the operator issues.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A Secret in this namespace with `tls.crt` (the server certificate, then any
    /// intermediates), `tls.key` and `ca.crt` (what clients trust), such as the Secret of
    /// a cert-manager Certificate. It must hold every Service and instance name as
    /// `<name>.<namespace>.svc`. Served by PostgreSQL and PgBouncer; a renewal written
    /// into it is reloaded without a restart. The operator never writes it.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub server_secret: String,
}
