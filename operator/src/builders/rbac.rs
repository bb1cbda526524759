//! ServiceAccount and RoleBinding of the instance pods: each instance reads its
//! GeoDatabase to learn which instance must be the primary.
//!
//! The binding refers to the ClusterRole `geodb-instance` (installed with the operator:
//! read GeoDatabases), not to a Role per GeoDatabase. A Role per GeoDatabase could name
//! the one object, but every Role or RoleBinding the operator writes then goes through
//! the API server's escalation check, which lists every binding in the namespace: with
//! 200 GeoDatabases in a namespace each such write took about 90 ms. Binding a named
//! ClusterRole is a single authorization check (the operator holds `bind` on that one
//! ClusterRole). The cost: an instance may read the other GeoDatabases of its namespace,
//! whose specs hold no credentials.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};

use super::Cluster;
use crate::names::{COMPONENT_DATABASE, INSTANCE_CLUSTER_ROLE};

pub fn service_account(cluster: &Cluster) -> ServiceAccount {
    ServiceAccount {
        metadata: cluster
            .component_meta(cluster.names.instance_service_account(), COMPONENT_DATABASE),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

pub fn role_binding(cluster: &Cluster) -> RoleBinding {
    let name = cluster.names.instance_service_account();
    RoleBinding {
        metadata: cluster.component_meta(name.clone(), COMPONENT_DATABASE),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: INSTANCE_CLUSTER_ROLE.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: Some(cluster.namespace.clone()),
            ..Subject::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::cluster;
    use serde_json::json;

    #[test]
    fn instances_are_bound_to_the_instance_cluster_role_in_their_namespace() {
        let c = cluster(json!({"storage": {"size": "1Gi"}}));
        let binding = role_binding(&c);
        assert_eq!(
            (
                binding.role_ref.kind.as_str(),
                binding.role_ref.name.as_str()
            ),
            ("ClusterRole", "geodb-instance")
        );
        assert_eq!(binding.metadata.namespace, Some(c.namespace.clone()));
        let subjects = binding.subjects.unwrap();
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].name, "geo-instance");
        assert_eq!(subjects[0].namespace, Some(c.namespace.clone()));
        // The pod template mounts the token explicitly; nothing else gets it.
        assert_eq!(
            service_account(&c).automount_service_account_token,
            Some(false)
        );
    }
}
