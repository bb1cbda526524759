//! ServiceAccount, Role and RoleBinding of the instance pods: each instance reads its own
//! GeoDatabase (and nothing else) to learn which instance must be the primary.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

use super::Cluster;
use crate::names::COMPONENT_DATABASE;

pub fn service_account(cluster: &Cluster) -> ServiceAccount {
    ServiceAccount {
        metadata: cluster
            .component_meta(cluster.names.instance_service_account(), COMPONENT_DATABASE),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

/// Read access to this GeoDatabase only.
pub fn role(cluster: &Cluster) -> Role {
    Role {
        metadata: cluster
            .component_meta(cluster.names.instance_service_account(), COMPONENT_DATABASE),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["geodb.io".into()]),
            resources: Some(vec!["geodatabases".into()]),
            resource_names: Some(vec![cluster.names.cluster.clone()]),
            verbs: vec!["get".into()],
            ..PolicyRule::default()
        }]),
    }
}

pub fn role_binding(cluster: &Cluster) -> RoleBinding {
    let name = cluster.names.instance_service_account();
    RoleBinding {
        metadata: cluster.component_meta(name.clone(), COMPONENT_DATABASE),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.clone(),
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
    fn instances_may_only_read_their_own_geodatabase() {
        let c = cluster(json!({"storage": {"size": "1Gi"}}));
        let role = role(&c);
        let rules = role.rules.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].verbs, vec!["get"]);
        assert_eq!(rules[0].resource_names, Some(vec!["geo".to_owned()]));
        let binding = role_binding(&c);
        assert_eq!(binding.role_ref.name, "geo-instance");
        assert_eq!(binding.subjects.unwrap()[0].name, "geo-instance");
        // The pod template mounts the token explicitly; nothing else gets it.
        assert_eq!(
            service_account(&c).automount_service_account_token,
            Some(false)
        );
    }
}
