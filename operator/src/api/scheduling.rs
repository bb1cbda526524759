//! Where the pods run: `spec.scheduling`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Node label that tells one node from another.
pub const HOSTNAME_TOPOLOGY_KEY: &str = "kubernetes.io/hostname";
/// Node label of the zone, for the topology spread.
pub const ZONE_TOPOLOGY_KEY: &str = "topology.kubernetes.io/zone";

/// Spreading of the instances (and of each pooler's pods) over nodes and zones, and the
/// nodes they may run on.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingSpec {
    /// `preferred`: two instances (or two pods of one pooler) share a `topologyKey`
    /// domain only when no other fits; `required`: never (a pod stays Pending instead).
    #[serde(default)]
    pub anti_affinity: AntiAffinity,

    /// Node label whose values are the domains the anti-affinity keeps apart.
    #[serde(default = "default_topology_key")]
    #[schemars(
        length(min = 1, max = 317),
        regex(
            pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
        )
    )]
    pub topology_key: String,

    /// Only nodes with these labels run the instances and the poolers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Taints the instances and the poolers tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

impl Default for SchedulingSpec {
    fn default() -> Self {
        Self {
            anti_affinity: AntiAffinity::default(),
            topology_key: default_topology_key(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
        }
    }
}

fn default_topology_key() -> String {
    HOSTNAME_TOPOLOGY_KEY.to_owned()
}

/// How strictly pods of one kind are kept apart.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AntiAffinity {
    /// A scheduling preference (weight 100): spread when the nodes allow it.
    #[default]
    Preferred,
    /// A scheduling rule: one pod per domain, or none.
    Required,
}
