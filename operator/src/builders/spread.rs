//! Spread and budgets: where the instance and pooler pods may run (anti-affinity against
//! their own kind, a spread over zones, `spec.scheduling`'s node selector and tolerations)
//! and the PodDisruptionBudgets that keep a node drain from stopping more than one
//! instance at a time.
//!
//! The budgets, for a cluster of two or more instances:
//! - `<name>-primary`, `minAvailable: 1` over the pod labelled primary: a drain cannot
//!   evict the primary. It waits until a switchover (`spec.primary`) has moved the primary
//!   away; the drain's retries then evict the pod, now a replica.
//! - `<name>-replicas`, `minAvailable: instances - 2` over the pods labelled replica: one
//!   at a time. Not `maxUnavailable: 1`: that counts from the pods the selector finds, and
//!   an evicted replica's new pod has no role label for a moment, so another replica could
//!   go meanwhile.
//!
//! Together at most one instance is evicted at once. A single-instance cluster gets no
//! budget: it has no replica to switch over to, so a budget could only block every drain
//! until someone deleted it; a drain stops it (see docs/architecture.md). Each pooler gets
//! `maxUnavailable: 1`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Affinity, PodAffinityTerm, PodAntiAffinity, PodSpec, TopologySpreadConstraint,
    WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::pooler::{self, Access};
use super::Cluster;
use crate::api::{AntiAffinity, Role, SchedulingSpec, ZONE_TOPOLOGY_KEY};
use crate::names::{COMPONENT_DATABASE, LABEL_CLUSTER, LABEL_COMPONENT, LABEL_ROLE};

/// Weight of the preferred anti-affinity: the most a preference can weigh.
const PREFERRED_WEIGHT: i32 = 100;

/// Selector of every instance pod of a cluster.
pub fn instance_pods(cluster: &Cluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_CLUSTER.to_owned(), cluster.names.cluster.clone()),
        (LABEL_COMPONENT.to_owned(), COMPONENT_DATABASE.to_owned()),
    ])
}

fn selector(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        ..LabelSelector::default()
    }
}

fn anti_affinity(scheduling: &SchedulingSpec, own: &BTreeMap<String, String>) -> PodAntiAffinity {
    let term = PodAffinityTerm {
        label_selector: Some(selector(own.clone())),
        topology_key: scheduling.topology_key.clone(),
        ..PodAffinityTerm::default()
    };
    match scheduling.anti_affinity {
        AntiAffinity::Preferred => PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: PREFERRED_WEIGHT,
                    pod_affinity_term: term,
                },
            ]),
            ..PodAntiAffinity::default()
        },
        AntiAffinity::Required => PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![term]),
            ..PodAntiAffinity::default()
        },
    }
}

/// `pod` with the placement of `spec.scheduling`: kept apart from the pods `own` selects
/// (its own kind), spread over zones, on the selected nodes, with the tolerations.
pub fn place(
    mut pod: PodSpec,
    scheduling: &SchedulingSpec,
    own: &BTreeMap<String, String>,
) -> PodSpec {
    pod.affinity = Some(Affinity {
        pod_anti_affinity: Some(anti_affinity(scheduling, own)),
        ..Affinity::default()
    });
    // A preference only: a cluster without zones (or with fewer zones than pods) still
    // schedules everything.
    pod.topology_spread_constraints = Some(vec![TopologySpreadConstraint {
        max_skew: 1,
        topology_key: ZONE_TOPOLOGY_KEY.to_owned(),
        when_unsatisfiable: "ScheduleAnyway".to_owned(),
        label_selector: Some(selector(own.clone())),
        ..TopologySpreadConstraint::default()
    }]);
    pod.node_selector =
        (!scheduling.node_selector.is_empty()).then(|| scheduling.node_selector.clone());
    pod.tolerations = (!scheduling.tolerations.is_empty()).then(|| scheduling.tolerations.clone());
    pod
}

/// A pooler's rollout. Under required anti-affinity a surge pod may find every node
/// taken by the pooler's other pods and stay Pending, stalling the rollout: pods are
/// then replaced one at a time instead (the budget allows one down anyway).
pub fn pooler_strategy(scheduling: &SchedulingSpec) -> Option<DeploymentStrategy> {
    (scheduling.anti_affinity == AntiAffinity::Required).then(|| DeploymentStrategy {
        type_: Some("RollingUpdate".to_owned()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(IntOrString::Int(0)),
            max_unavailable: Some(IntOrString::Int(1)),
        }),
    })
}

fn budget(
    cluster: &Cluster,
    name: String,
    component: &str,
    pods: BTreeMap<String, String>,
    spec: PodDisruptionBudgetSpec,
) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: cluster.component_meta(name, component),
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(selector(pods)),
            ..spec
        }),
        ..PodDisruptionBudget::default()
    }
}

fn role_pods(cluster: &Cluster, role: Role) -> BTreeMap<String, String> {
    let mut pods = instance_pods(cluster);
    pods.insert(LABEL_ROLE.to_owned(), role.as_str().to_owned());
    pods
}

/// A pod that is not Ready serves nothing, so it may always be evicted: a crash-looping
/// pod never holds up a drain.
const ALWAYS_ALLOW: &str = "AlwaysAllow";

/// The PodDisruptionBudgets of a cluster (see the module's documentation).
pub fn disruption_budgets(cluster: &Cluster) -> Vec<PodDisruptionBudget> {
    let mut budgets = Vec::new();
    let instances = i32::try_from(cluster.instances.len()).unwrap_or(i32::MAX);
    if instances > 1 {
        budgets.push(budget(
            cluster,
            cluster.names.primary_budget(),
            COMPONENT_DATABASE,
            role_pods(cluster, Role::Primary),
            PodDisruptionBudgetSpec {
                min_available: Some(IntOrString::Int(1)),
                ..PodDisruptionBudgetSpec::default()
            },
        ));
        budgets.push(budget(
            cluster,
            cluster.names.replicas_budget(),
            COMPONENT_DATABASE,
            role_pods(cluster, Role::Replica),
            PodDisruptionBudgetSpec {
                min_available: Some(IntOrString::Int(instances - 2)),
                unhealthy_pod_eviction_policy: Some(ALWAYS_ALLOW.to_owned()),
                ..PodDisruptionBudgetSpec::default()
            },
        ));
    }
    if cluster.spec.pooler.enabled {
        for access in Access::BOTH {
            budgets.push(budget(
                cluster,
                access.name(cluster),
                access.component(),
                pooler::selector(cluster, access),
                // Counted from the Deployment's replicas, whatever pods exist.
                PodDisruptionBudgetSpec {
                    max_unavailable: Some(IntOrString::Int(1)),
                    unhealthy_pod_eviction_policy: Some(ALWAYS_ALLOW.to_owned()),
                    ..PodDisruptionBudgetSpec::default()
                },
            ));
        }
    }
    budgets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::cluster;
    use crate::builders::instance;
    use serde_json::json;

    fn pod_of_instance(spec: serde_json::Value) -> PodSpec {
        let c = cluster(spec);
        instance::statefulset(&c, "geo-2")
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
    }

    fn budget_named<'b>(
        budgets: &'b [PodDisruptionBudget],
        name: &str,
    ) -> &'b PodDisruptionBudgetSpec {
        budgets
            .iter()
            .find(|b| b.metadata.name.as_deref() == Some(name))
            .and_then(|b| b.spec.as_ref())
            .unwrap_or_else(|| panic!("no budget {name}"))
    }

    fn match_labels(spec: &PodDisruptionBudgetSpec) -> BTreeMap<String, String> {
        spec.selector.clone().unwrap().match_labels.unwrap()
    }

    #[test]
    fn instances_prefer_other_nodes_and_zones_by_default() {
        let pod = pod_of_instance(json!({"instances": 3, "storage": {"size": "1Gi"}}));
        let anti = pod.affinity.unwrap().pod_anti_affinity.unwrap();
        assert!(anti
            .required_during_scheduling_ignored_during_execution
            .is_none());
        let preferred = &anti
            .preferred_during_scheduling_ignored_during_execution
            .unwrap()[0];
        assert_eq!(preferred.weight, 100);
        let term = &preferred.pod_affinity_term;
        assert_eq!(term.topology_key, "kubernetes.io/hostname");
        // Every instance of this cluster, whatever its role; nothing of another cluster.
        let selected = term.label_selector.clone().unwrap().match_labels.unwrap();
        assert_eq!(
            selected,
            BTreeMap::from([
                ("geodb.io/cluster".to_owned(), "geo".to_owned()),
                (
                    "app.kubernetes.io/component".to_owned(),
                    "database".to_owned()
                ),
            ])
        );
        let spread = &pod.topology_spread_constraints.unwrap()[0];
        assert_eq!(spread.topology_key, "topology.kubernetes.io/zone");
        assert_eq!(spread.when_unsatisfiable, "ScheduleAnyway");
        assert_eq!(spread.max_skew, 1);
        assert_eq!(
            spread.label_selector.clone().unwrap().match_labels.unwrap(),
            selected
        );
        assert!(pod.node_selector.is_none() && pod.tolerations.is_none());
    }

    #[test]
    fn required_anti_affinity_with_another_key_nodes_and_tolerations() {
        let pod = pod_of_instance(json!({"storage": {"size": "1Gi"}, "scheduling": {
            "antiAffinity": "required", "topologyKey": "example.com/rack",
            "nodeSelector": {"disk": "ssd"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}],
        }}));
        let anti = pod.affinity.unwrap().pod_anti_affinity.unwrap();
        assert!(anti
            .preferred_during_scheduling_ignored_during_execution
            .is_none());
        let required = anti
            .required_during_scheduling_ignored_during_execution
            .unwrap();
        assert_eq!(required[0].topology_key, "example.com/rack");
        assert_eq!(pod.node_selector.unwrap()["disk"], "ssd");
        assert_eq!(
            pod.tolerations.unwrap()[0].key.as_deref(),
            Some("dedicated")
        );
    }

    #[test]
    fn each_pooler_avoids_its_own_pods() {
        let c = cluster(json!({"storage": {"size": "1Gi"}, "pooler": {"instances": 3}}));
        for access in Access::BOTH {
            let deployment = pooler::deployment(&c, access).spec.unwrap();
            let pod = deployment.template.spec.unwrap();
            let term = &pod
                .affinity
                .unwrap()
                .pod_anti_affinity
                .unwrap()
                .preferred_during_scheduling_ignored_during_execution
                .unwrap()[0]
                .pod_affinity_term;
            let selected = term.label_selector.clone().unwrap().match_labels.unwrap();
            assert_eq!(selected, pooler::selector(&c, access));
            assert_eq!(selected, deployment.selector.match_labels.unwrap());
            assert!(pod.topology_spread_constraints.is_some());
            assert!(deployment.strategy.is_none());
        }
    }

    #[test]
    fn required_poolers_roll_without_surge() {
        let c = cluster(
            json!({"storage": {"size": "1Gi"}, "pooler": {"instances": 2},
            "scheduling": {"antiAffinity": "required"}}),
        );
        let strategy = pooler::deployment(&c, Access::ReadWrite)
            .spec
            .unwrap()
            .strategy
            .unwrap()
            .rolling_update
            .unwrap();
        assert_eq!(strategy.max_surge, Some(IntOrString::Int(0)));
        assert_eq!(strategy.max_unavailable, Some(IntOrString::Int(1)));
    }

    #[test]
    fn budgets_keep_the_primary_and_let_one_replica_go() {
        let c = cluster(json!({"instances": 3, "storage": {"size": "1Gi"}}));
        let budgets = disruption_budgets(&c);
        let names: Vec<_> = budgets
            .iter()
            .filter_map(|b| b.metadata.name.clone())
            .collect();
        assert_eq!(
            names,
            ["geo-primary", "geo-replicas", "geo-pooler", "geo-pooler-ro"]
        );
        let primary = budget_named(&budgets, "geo-primary");
        assert_eq!(primary.min_available, Some(IntOrString::Int(1)));
        assert!(primary.max_unavailable.is_none());
        assert_eq!(match_labels(primary)["geodb.io/role"], "primary");
        // Two replicas, one of which may go.
        let replicas = budget_named(&budgets, "geo-replicas");
        assert_eq!(replicas.min_available, Some(IntOrString::Int(1)));
        assert!(replicas.max_unavailable.is_none());
        // Every replica, serving reads or not.
        assert_eq!(
            match_labels(replicas),
            BTreeMap::from([
                ("geodb.io/cluster".to_owned(), "geo".to_owned()),
                (
                    "app.kubernetes.io/component".to_owned(),
                    "database".to_owned()
                ),
                ("geodb.io/role".to_owned(), "replica".to_owned()),
            ])
        );
        for access in Access::BOTH {
            let pooler_budget = budget_named(&budgets, &access.name(&c));
            assert_eq!(pooler_budget.max_unavailable, Some(IntOrString::Int(1)));
            assert_eq!(match_labels(pooler_budget), pooler::selector(&c, access));
        }
        let owner = &budgets[0].metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.uid, "uid-1");
        assert_eq!(
            budgets[0].metadata.labels.as_ref().unwrap()["geodb.io/cluster"],
            "geo"
        );
    }

    #[test]
    fn a_single_instance_has_no_budget_to_block_drains() {
        let single = cluster(json!({"storage": {"size": "1Gi"}}));
        let names: Vec<_> = disruption_budgets(&single)
            .iter()
            .filter_map(|b| b.metadata.name.clone())
            .collect();
        assert_eq!(names, ["geo-pooler", "geo-pooler-ro"]);
        // Two instances: the replica may go, the primary may not.
        let pair = disruption_budgets(&cluster(
            json!({"instances": 2, "storage": {"size": "1Gi"}}),
        ));
        assert_eq!(
            budget_named(&pair, "geo-replicas").min_available,
            Some(IntOrString::Int(0))
        );
        assert_eq!(
            budget_named(&pair, "geo-primary").min_available,
            Some(IntOrString::Int(1))
        );
        let bare = cluster(json!({"storage": {"size": "1Gi"}, "pooler": {"enabled": false}}));
        assert!(disruption_budgets(&bare).is_empty());
    }
}
