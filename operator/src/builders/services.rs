//! Services: read-write (primary), read-only (replicas), one headless Service per instance.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Cluster;
use crate::api::Role;
use crate::names::{
    instance_labels, role_selector, COMPONENT_DATABASE, LABEL_CLUSTER, LABEL_INSTANCE,
    POSTGRES_PORT,
};

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
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::cluster;
    use serde_json::json;

    #[test]
    fn rw_and_ro_select_by_role() {
        let c = cluster(json!({"instances": 3, "storage": {"size": "1Gi"}}));
        let svcs = services(&c);
        assert_eq!(svcs.len(), 5);
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
