//! The Prometheus Operator's `PodMonitor` (monitoring.coreos.com/v1) of a GeoDatabase:
//! the instance pods' `agent` port and the pooler pods' `metrics` port, with the labels
//! the shipped alerts and dashboard use (`cluster`, `instance` = the pod, `job`).

use serde_json::{json, Value};

use super::Cluster;
use crate::names::{COMPONENT_METRICS, LABEL_CLUSTER, LABEL_MANAGED_BY, MANAGED_BY};

pub const POD_MONITOR_GROUP: &str = "monitoring.coreos.com";
pub const POD_MONITOR_VERSION: &str = "v1";
pub const POD_MONITOR_KIND: &str = "PodMonitor";

fn endpoint(port: &str, job: &str) -> Value {
    json!({
        "port": port,
        "path": "/metrics",
        "scrapeTimeout": "5s",
        "relabelings": [
            {"sourceLabels": ["__meta_kubernetes_pod_label_geodb_io_cluster"], "targetLabel": "cluster"},
            {"sourceLabels": ["__meta_kubernetes_pod_name"], "targetLabel": "instance"},
            {"targetLabel": "job", "replacement": job},
        ],
    })
}

/// The annotation holding a digest of the PodMonitor's spec as the operator wrote it: a
/// server that adds defaults to the spec does not make it look changed.
pub const ANNOTATION_SPEC_HASH: &str = "geodb.io/spec-hash";

/// The PodMonitor object (pure).
pub fn pod_monitor(cluster: &Cluster) -> Value {
    let mut pm = pod_monitor_unhashed(cluster);
    let hash = super::content_hash(&[pm["spec"].to_string().as_bytes()]);
    pm["metadata"]["annotations"] = json!({ ANNOTATION_SPEC_HASH: hash });
    pm
}

fn pod_monitor_unhashed(cluster: &Cluster) -> Value {
    let meta = cluster.component_meta(cluster.names.cluster.clone(), COMPONENT_METRICS);
    json!({
        "apiVersion": format!("{POD_MONITOR_GROUP}/{POD_MONITOR_VERSION}"),
        "kind": POD_MONITOR_KIND,
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": {
                LABEL_CLUSTER: cluster.names.cluster,
                LABEL_MANAGED_BY: MANAGED_BY,
            }},
            "podMetricsEndpoints": [
                endpoint("agent", "geodb-instance"),
                endpoint("metrics", "geodb-pooler"),
            ],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::cluster;

    #[test]
    fn selects_the_clusters_pods_and_names_both_ports() {
        let c = cluster(json!({"storage": {"size": "1Gi"}}));
        let pm = pod_monitor(&c);
        assert_eq!(pm["kind"], "PodMonitor");
        assert_eq!(pm["metadata"]["name"], "geo");
        assert_eq!(pm["metadata"]["ownerReferences"][0]["kind"], "GeoDatabase");
        assert_eq!(
            pm["spec"]["selector"]["matchLabels"]["geodb.io/cluster"],
            "geo"
        );
        let endpoints = pm["spec"]["podMetricsEndpoints"].as_array().unwrap();
        assert_eq!(endpoints[0]["port"], "agent");
        assert_eq!(endpoints[1]["port"], "metrics");
        assert_eq!(
            endpoints[1]["relabelings"][2]["replacement"],
            "geodb-pooler"
        );
    }
}
