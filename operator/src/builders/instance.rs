//! One StatefulSet per instance (replicas: 1). The pod's role is a label the operator
//! sets on the pod, never part of the template, so a failover changes no StatefulSet and
//! rolls no pod.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, ExecAction, KeyToPath, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, SeccompProfile, SecretProjection, SecurityContext, Volume, VolumeMount,
    VolumeProjection, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::config::config_hash;
use super::env;
use super::spread;
use super::Cluster;
use crate::api::DeletionPolicy;
use crate::names::{
    instance_labels, Names, ANNOTATION_CONFIG_HASH, LABEL_CLUSTER, LABEL_INSTANCE, PGDATA_VOLUME,
    POSTGRES_PORT,
};
use crate::pod_contract::{
    env as var, Credential, AGENT_PORT, CA_CERT, CONFIG_DIR, CUSTOM_QUERIES_FILE, DATA_DIR,
    MONITORING_DIR, PASSWORD_FILE, PGDATA, POSTGRES_UID, SECRETS_DIR, SHM_DIR, SOCKET_DIR,
    TLS_CERT, TLS_KEY, TLS_SUBDIR, TMP_DIR,
};

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

fn empty_dir(name: &str, memory: bool) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: memory.then(|| "Memory".to_owned()),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn pg_isready_probe(period: i32, failure_threshold: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(vec![
                "pg_isready".into(),
                "-q".into(),
                "-h".into(),
                SOCKET_DIR.into(),
                "-p".into(),
                POSTGRES_PORT.to_string(),
            ]),
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(5),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

/// Non-root, no privilege escalation, no capabilities, RuntimeDefault seccomp.
pub fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

pub fn restricted_pod_security(uid: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        fs_group: Some(uid),
        fs_group_change_policy: Some("OnRootMismatch".into()),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// The password of `role`, from its Secret, at the role's path under the secrets
/// directory (read-only to the owner).
pub(super) fn password_projection(secret: String, role: Credential) -> VolumeProjection {
    VolumeProjection {
        secret: Some(SecretProjection {
            name: secret,
            items: Some(vec![k8s_openapi::api::core::v1::KeyToPath {
                key: PASSWORD_FILE.into(),
                path: role.password_path(),
                mode: Some(0o400),
            }]),
            ..SecretProjection::default()
        }),
        ..VolumeProjection::default()
    }
}

/// Files of the server-certificate Secret under `TLS_SUBDIR` of the secrets directory
/// (`keys`: any of its `tls.crt`, `tls.key`, `ca.crt`), readable by the owner and (for
/// the key, as PostgreSQL allows when root owns it) the pod's group only.
pub(super) fn tls_projection(cluster: &Cluster, keys: &[&str]) -> VolumeProjection {
    VolumeProjection {
        secret: Some(SecretProjection {
            name: cluster.served_tls_secret(),
            items: Some(
                keys.iter()
                    .map(|key| k8s_openapi::api::core::v1::KeyToPath {
                        key: (*key).into(),
                        path: format!("{TLS_SUBDIR}/{key}"),
                        mode: Some(0o440),
                    })
                    .collect(),
            ),
            ..SecretProjection::default()
        }),
        ..VolumeProjection::default()
    }
}

fn secrets_volume(cluster: &Cluster) -> Volume {
    let n = &cluster.names;
    let project = password_projection;
    Volume {
        name: "secrets".into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(
                [
                    project(n.superuser_secret(), Credential::Superuser),
                    project(n.replication_secret(), Credential::Replication),
                    project(n.app_secret(), Credential::App),
                    project(n.pooler_login_secret(), Credential::Pooler),
                    tls_projection(cluster, &[TLS_CERT, TLS_KEY, CA_CERT]),
                ]
                .into_iter()
                .chain(super::archive::projections(cluster))
                .collect(),
            ),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The data volume claim template of an instance.
pub fn data_claim(cluster: &Cluster, instance: &str) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(PGDATA_VOLUME.into()),
            labels: Some(instance_labels(&cluster.names.cluster, instance)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: cluster.spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(cluster.spec.storage.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

fn container(cluster: &Cluster, instance: &str) -> Container {
    Container {
        name: "postgres".into(),
        image: Some(cluster.spec.image().to_owned()),
        image_pull_policy: Some(cluster.spec.image_pull_policy.as_str().to_owned()),
        command: Some(vec!["geodb".into(), "instance".into()]),
        env: Some(
            vec![
                env(var::CLUSTER, cluster.names.cluster.clone()),
                env(var::INSTANCE, instance),
                field_env(var::POD_NAME, "metadata.name"),
                field_env(var::POD_NAMESPACE, "metadata.namespace"),
                env(var::BOOTSTRAP_INSTANCE, cluster.names.instance(1)),
                env(var::RW_HOST, cluster.names.rw_service()),
                env(var::SLOT, Names::slot(instance)),
                env(var::DATABASE, cluster.spec.database.name.clone()),
                env(var::DATABASE_OWNER, cluster.spec.database.owner.clone()),
                env(var::CONFIG_DIR, CONFIG_DIR),
                env(var::SECRETS_DIR, SECRETS_DIR),
                env(var::PGDATA, PGDATA),
                env(var::PGHOST, SOCKET_DIR),
                env(var::PGPORT, POSTGRES_PORT.to_string()),
            ]
            .into_iter()
            .chain(super::archive::env_vars(cluster))
            .collect(),
        ),
        ports: Some(vec![
            ContainerPort {
                name: Some("postgres".into()),
                container_port: POSTGRES_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("agent".into()),
                container_port: AGENT_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        resources: cluster.spec.resources.clone(),
        // No liveness probe: `geodb instance` supervises PostgreSQL and keeps it down on
        // purpose while it is fenced or waiting to rejoin; a restart would not help.
        readiness_probe: Some(pg_isready_probe(2, 2)),
        security_context: Some(restricted_container_security()),
        volume_mounts: Some(
            vec![
                mount(PGDATA_VOLUME, DATA_DIR, false),
                mount("config", CONFIG_DIR, true),
                mount("secrets", SECRETS_DIR, true),
                mount("run", SOCKET_DIR, false),
                mount("tmp", TMP_DIR, false),
                mount("shm", SHM_DIR, false),
            ]
            .into_iter()
            .chain(
                cluster
                    .spec
                    .monitoring
                    .custom_queries
                    .as_ref()
                    .map(|_| mount("monitoring", MONITORING_DIR, true)),
            )
            .collect(),
        ),
        ..Container::default()
    }
}

/// `spec.monitoring.customQueries`: the exporter reads it at every scrape, so a changed
/// ConfigMap reaches it as the kubelet refreshes the volume, with no restart.
fn custom_queries_volume(cluster: &Cluster) -> Option<Volume> {
    let name = cluster.spec.monitoring.custom_queries.clone()?;
    Some(Volume {
        name: "monitoring".into(),
        config_map: Some(ConfigMapVolumeSource {
            name,
            items: Some(vec![KeyToPath {
                key: CUSTOM_QUERIES_FILE.into(),
                path: CUSTOM_QUERIES_FILE.into(),
                ..KeyToPath::default()
            }]),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    })
}

fn pod_spec(cluster: &Cluster, instance: &str) -> PodSpec {
    let pod = PodSpec {
        containers: vec![container(cluster, instance)],
        security_context: Some(restricted_pod_security(POSTGRES_UID)),
        // The instance reads its GeoDatabase (and only that: see builders::rbac).
        service_account_name: Some(cluster.names.instance_service_account()),
        automount_service_account_token: Some(true),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(30),
        volumes: Some(
            vec![
                Volume {
                    name: "config".into(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: cluster.names.config_map(),
                        ..ConfigMapVolumeSource::default()
                    }),
                    ..Volume::default()
                },
                secrets_volume(cluster),
                empty_dir("run", false),
                empty_dir("tmp", false),
                empty_dir("shm", true),
            ]
            .into_iter()
            .chain(custom_queries_volume(cluster))
            .collect(),
        ),
        ..PodSpec::default()
    };
    // Away from the other instances of this cluster, whatever their role.
    spread::place(
        pod,
        &cluster.spec.scheduling,
        &spread::instance_pods(cluster),
    )
}

pub fn statefulset(cluster: &Cluster, instance: &str) -> StatefulSet {
    let labels = instance_labels(&cluster.names.cluster, instance);
    let selector = BTreeMap::from([
        (LABEL_CLUSTER.to_owned(), cluster.names.cluster.clone()),
        (LABEL_INSTANCE.to_owned(), instance.to_owned()),
    ]);
    let pvc_policy = match cluster.spec.deletion_policy {
        DeletionPolicy::Retain => "Retain",
        DeletionPolicy::Delete => "Delete",
    };
    StatefulSet {
        metadata: cluster.meta(instance.to_owned(), labels.clone()),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(instance.to_owned()),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                ..StatefulSetUpdateStrategy::default()
            }),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(pvc_policy.into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([(
                        ANNOTATION_CONFIG_HASH.to_owned(),
                        config_hash(cluster),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(cluster, instance)),
            },
            volume_claim_templates: Some(vec![data_claim(cluster, instance)]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// Storage size requested by a StatefulSet's data claim template.
pub fn claimed_size(sts: &StatefulSet) -> Option<&str> {
    sts.spec
        .as_ref()?
        .volume_claim_templates
        .as_ref()?
        .first()?
        .spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .map(|q| q.0.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::{cluster, template_hash};
    use serde_json::json;

    #[test]
    fn statefulset_is_one_non_root_pod_without_role_label() {
        let c = cluster(
            json!({"instances": 2, "storage": {"size": "5Gi", "storageClassName": "fast"}}),
        );
        let sts = statefulset(&c, "geo-2");
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.service_name.as_deref(), Some("geo-2"));
        let tpl = spec.template.metadata.as_ref().unwrap();
        assert!(!tpl.labels.as_ref().unwrap().contains_key("geodb.io/role"));
        assert!(tpl
            .annotations
            .as_ref()
            .unwrap()
            .contains_key(ANNOTATION_CONFIG_HASH));
        let pod = spec.template.spec.as_ref().unwrap();
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        assert_eq!(claimed_size(&sts), Some("5Gi"));
        assert_eq!(pod.service_account_name.as_deref(), Some("geo-instance"));
        assert!(pod.containers[0].liveness_probe.is_none());
        let claim = &spec.volume_claim_templates.as_ref().unwrap()[0];
        assert_eq!(
            claim.spec.as_ref().unwrap().storage_class_name.as_deref(),
            Some("fast")
        );
        assert_eq!(
            sts.metadata.owner_references.as_ref().unwrap()[0].uid,
            "uid-1"
        );
    }

    #[test]
    fn deletion_policy_maps_to_pvc_retention() {
        let retain = cluster(json!({"storage": {"size": "1Gi"}}));
        let delete = cluster(json!({"storage": {"size": "1Gi"}, "deletionPolicy": "Delete"}));
        let policy = |c: &Cluster| {
            statefulset(c, "geo-1")
                .spec
                .unwrap()
                .persistent_volume_claim_retention_policy
                .unwrap()
                .when_deleted
        };
        assert_eq!(policy(&retain).as_deref(), Some("Retain"));
        assert_eq!(policy(&delete).as_deref(), Some("Delete"));
    }

    #[test]
    fn restart_parameters_roll_pods() {
        let a = cluster(json!({"storage": {"size": "1Gi"}}));
        let b = cluster(
            json!({"storage": {"size": "1Gi"}, "postgresql": {"parameters": {"shared_buffers": "16MB"}}}),
        );
        let hash = |c: &Cluster| template_hash(&statefulset(c, "geo-1").spec.unwrap().template);
        assert_ne!(hash(&a), hash(&b));
    }
}
