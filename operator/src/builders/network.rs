//! The NetworkPolicy of a GeoDatabase (`spec.network.policy`): its pods (instances,
//! poolers, backup jobs) admit
//! - one another, on any port (replication, the poolers' and backups' connections);
//! - the operator's pods, on any port (probes of PostgreSQL and of the instance agents),
//!   from the operator's namespace when it is known;
//! - every pod of the GeoDatabase's namespace and of `allowedNamespaces`, on the
//!   PostgreSQL and PgBouncer ports only;
//! - the pods of `metricsNamespaces` (Prometheus), on the metrics ports only.
//!
//! Egress is left open: the instances reach the API server, the object store and one
//! another, whose addresses a policy cannot name in advance.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Cluster;
use crate::names::{LABEL_CLUSTER, POOLER_PORT, POSTGRES_PORT};
use crate::pod_contract::AGENT_PORT;
use crate::pooler::console::METRICS_PORT;

/// How the operator's pods are labelled (the chart and `config/manager` both do).
const OPERATOR_LABEL: (&str, &str) = ("app.kubernetes.io/name", "geodb-operator");
/// The label every namespace carries with its own name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

fn selector(labels: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..LabelSelector::default()
    }
}

fn namespaces_named(names: Vec<String>) -> LabelSelector {
    LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: NAMESPACE_NAME_LABEL.to_owned(),
            operator: "In".to_owned(),
            values: Some(names),
        }]),
        ..LabelSelector::default()
    }
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".to_owned()),
        ..NetworkPolicyPort::default()
    }
}

/// The pods of `metricsNamespaces`, to the metrics ports.
fn scrapers(cluster: &Cluster) -> Option<NetworkPolicyIngressRule> {
    let names = &cluster.spec.network.metrics_namespaces;
    (!names.is_empty()).then(|| NetworkPolicyIngressRule {
        from: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(namespaces_named(names.clone())),
            ..NetworkPolicyPeer::default()
        }]),
        ports: Some(vec![tcp(AGENT_PORT), tcp(METRICS_PORT)]),
    })
}

/// `None` when the spec turns the policy off.
pub fn network_policy(cluster: &Cluster) -> Option<NetworkPolicy> {
    if !cluster.spec.network.policy {
        return None;
    }
    let own = selector(&[(LABEL_CLUSTER, cluster.names.cluster.as_str())]);
    let operator = NetworkPolicyPeer {
        pod_selector: Some(selector(&[OPERATOR_LABEL])),
        namespace_selector: Some(match &cluster.operator_namespace {
            Some(ns) => namespaces_named(vec![ns.clone()]),
            None => LabelSelector::default(),
        }),
        ..NetworkPolicyPeer::default()
    };
    let mut clients = vec![NetworkPolicyPeer {
        pod_selector: Some(LabelSelector::default()),
        ..NetworkPolicyPeer::default()
    }];
    let allowed = &cluster.spec.network.allowed_namespaces;
    if !allowed.is_empty() {
        clients.push(NetworkPolicyPeer {
            namespace_selector: Some(namespaces_named(allowed.clone())),
            ..NetworkPolicyPeer::default()
        });
    }
    Some(NetworkPolicy {
        metadata: cluster.component_meta(cluster.names.network_policy(), "network"),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(own.clone()),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(
                vec![
                    NetworkPolicyIngressRule {
                        from: Some(vec![
                            NetworkPolicyPeer {
                                pod_selector: Some(own),
                                ..NetworkPolicyPeer::default()
                            },
                            operator,
                        ]),
                        ports: None,
                    },
                    NetworkPolicyIngressRule {
                        from: Some(clients),
                        ports: Some(vec![tcp(POSTGRES_PORT), tcp(POOLER_PORT)]),
                    },
                ]
                .into_iter()
                .chain(scrapers(cluster))
                .collect(),
            ),
            ..NetworkPolicySpec::default()
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::cluster;

    fn rules(policy: &NetworkPolicy) -> Vec<NetworkPolicyIngressRule> {
        policy.spec.clone().unwrap().ingress.unwrap()
    }

    #[test]
    fn own_pods_and_the_operator_on_any_port_clients_on_two() {
        let mut c = cluster(serde_json::json!({"instances": 3, "storage": {"size": "1Gi"}}));
        c.operator_namespace = Some("geodb-system".into());
        let policy = network_policy(&c).unwrap();
        let spec = policy.spec.clone().unwrap();
        assert_eq!(
            spec.pod_selector.unwrap().match_labels.unwrap()[LABEL_CLUSTER],
            c.names.cluster
        );
        let rules = rules(&policy);
        assert_eq!(rules.len(), 2);
        assert!(rules[0].ports.is_none());
        let operator = &rules[0].from.as_ref().unwrap()[1];
        let ns = operator.namespace_selector.clone().unwrap();
        assert_eq!(
            ns.match_expressions.unwrap()[0].values,
            Some(vec!["geodb-system".to_owned()])
        );
        let ports: Vec<_> = rules[1].ports.clone().unwrap();
        assert_eq!(ports, vec![tcp(POSTGRES_PORT), tcp(POOLER_PORT)]);
        // The GeoDatabase's own namespace only, without allowedNamespaces.
        assert_eq!(rules[1].from.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn metrics_namespaces_reach_the_metrics_ports_only() {
        let mut c = cluster(serde_json::json!({"storage": {"size": "1Gi"}}));
        c.spec.network.metrics_namespaces = vec!["monitoring".into()];
        let rules = rules(&network_policy(&c).unwrap());
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[2].ports.clone().unwrap(), vec![tcp(8008), tcp(9127)]);
        let ns = rules[2].from.clone().unwrap()[0]
            .namespace_selector
            .clone()
            .unwrap();
        assert_eq!(
            ns.match_expressions.unwrap()[0].values,
            Some(vec!["monitoring".to_owned()])
        );
    }

    #[test]
    fn allowed_namespaces_and_off() {
        let mut c = cluster(serde_json::json!({"storage": {"size": "1Gi"}}));
        c.spec.network.allowed_namespaces = vec!["web".into(), "etl".into()];
        let policy = network_policy(&c).unwrap();
        let from = rules(&policy)[1].from.clone().unwrap();
        let ns = from[1].namespace_selector.clone().unwrap();
        assert_eq!(
            ns.match_expressions.unwrap()[0].values,
            Some(vec!["web".to_owned(), "etl".to_owned()])
        );
        // Operator namespace unknown: its pods in any namespace.
        let operator = &rules(&policy)[0].from.clone().unwrap()[1];
        assert_eq!(operator.namespace_selector, Some(LabelSelector::default()));
        c.spec.network.policy = false;
        assert!(network_policy(&c).is_none());
    }
}
