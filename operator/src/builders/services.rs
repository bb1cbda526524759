//! Services: read-write (primary), read-only (replicas), one headless Service per
//! instance, and the headless metrics Service of all instances.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Cluster;
use crate::api::Role;
use crate::names::{
    instance_labels, role_selector, COMPONENT_DATABASE, COMPONENT_METRICS, LABEL_CLUSTER,
    LABEL_COMPONENT, LABEL_INSTANCE, POSTGRES_PORT,
};
use crate::pod_contract::AGENT_PORT;

fn postgres_port() -> ServicePort {
    ServicePort {
        name: Some("postgres".into()),
        port: POSTGRES_PORT,
        target_port: Some(IntOrString::String("postgres".into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

fn role_service(cluster: &Cluster, name: String, role: Role) -> Service {
    Service {
        metadata: cluster.component_meta(name, COMPONENT_DATABASE),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(role_selector(&cluster.names.cluster, role)),
            ports: Some(vec![postgres_port()]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Headless Service of one instance: the stable DNS name replicas stream from.
fn instance_service(cluster: &Cluster, instance: &str) -> Service {
    let labels = instance_labels(&cluster.names.cluster, instance);
    Service {
        metadata: cluster.meta(instance.to_owned(), labels),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(
                [
                    (LABEL_CLUSTER.to_owned(), cluster.names.cluster.clone()),
                    (LABEL_INSTANCE.to_owned(), instance.to_owned()),
                ]
                .into(),
            ),
            ports: Some(vec![postgres_port()]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Every instance's `/metrics`, whatever its role and readiness (an instance that is
/// down must still be scraped: its exporter says so), for a ServiceMonitor or a
/// Prometheus that discovers endpoints.
fn metrics_service(cluster: &Cluster) -> Service {
    Service {
        metadata: cluster.component_meta(cluster.names.metrics_service(), COMPONENT_METRICS),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(
                [
                    (LABEL_CLUSTER.to_owned(), cluster.names.cluster.clone()),
                    (LABEL_COMPONENT.to_owned(), COMPONENT_DATABASE.to_owned()),
                ]
                .into(),
            ),
            ports: Some(vec![ServicePort {
                name: Some("metrics".into()),
                port: AGENT_PORT,
                target_port: Some(IntOrString::String("agent".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

pub fn services(cluster: &Cluster) -> Vec<Service> {
    let mut out = vec![
        role_service(cluster, cluster.names.rw_service(), Role::Primary),
        role_service(cluster, cluster.names.ro_service(), Role::Replica),
    ];
    out.extend(
        cluster
            .instances
            .iter()
            .map(|instance| instance_service(cluster, instance)),
    );
    out.push(metrics_service(cluster));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::cluster;
    use serde_json::json;

    #[test]
    fn the_metrics_service_reaches_every_instance_agent() {
        let c = cluster(json!({"instances": 2, "storage": {"size": "1Gi"}}));
        let all = services(&c);
        let m = all
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("geo-metrics"))
            .unwrap();
        let spec = m.spec.as_ref().unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(
            spec.selector.as_ref().unwrap()["app.kubernetes.io/component"],
            "database"
        );
        let port = &spec.ports.as_ref().unwrap()[0];
        assert_eq!((port.name.as_deref(), port.port), (Some("metrics"), 8008));
        assert_eq!(port.target_port, Some(IntOrString::String("agent".into())));
    }

    #[test]
    fn rw_and_ro_select_by_role() {
        let c = cluster(json!({"instances": 3, "storage": {"size": "1Gi"}}));
        let svcs = services(&c);
        assert_eq!(svcs.len(), 6);
        let rw = svcs[0].spec.as_ref().unwrap().selector.as_ref().unwrap();
        assert_eq!(rw["geodb.io/role"], "primary");
        assert_eq!(rw["geodb.io/cluster"], "geo");
        let ro = svcs[1].spec.as_ref().unwrap().selector.as_ref().unwrap();
        assert_eq!(ro["geodb.io/role"], "replica");
        assert_eq!(ro["geodb.io/serving-reads"], "true");
        let headless = svcs[4].spec.as_ref().unwrap();
        assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
        assert_eq!(
            headless.selector.as_ref().unwrap()["geodb.io/instance"],
            "geo-3"
        );
    }
}
