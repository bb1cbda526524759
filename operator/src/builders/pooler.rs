//! PgBouncer: its ConfigMap (`pgbouncer.ini`), auth Secret (`userlist.txt`), Deployment
//! and Service. PgBouncer sends every database to the read-write Service.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, PodSpec, PodTemplateSpec, Probe,
    Secret, SecretVolumeSource, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::instance::{restricted_container_security, restricted_pod_security, POSTGRES_UID};
use super::{content_hash, Cluster};
use crate::names::{
    cluster_labels, ANNOTATION_CONFIG_HASH, COMPONENT_POOLER, LABEL_CLUSTER, LABEL_COMPONENT,
    POOLER_PORT, POSTGRES_PORT,
};

pub const PGBOUNCER_INI: &str = "pgbouncer.ini";
pub const USERLIST: &str = "userlist.txt";
const CONFIG_DIR: &str = "/etc/pgbouncer";
const AUTH_DIR: &str = "/etc/pgbouncer/auth";

pub fn pgbouncer_ini(cluster: &Cluster) -> String {
    let pooler = &cluster.spec.pooler;
    let rw = cluster.service_host(&cluster.names.rw_service());
    format!(
        "; Written by geodb-operator from the GeoDatabase spec.\n\
         [databases]\n\
         * = host={rw} port={POSTGRES_PORT}\n\
         \n\
         [pgbouncer]\n\
         listen_addr = 0.0.0.0\n\
         listen_port = {POOLER_PORT}\n\
         unix_socket_dir =\n\
         auth_type = scram-sha-256\n\
         auth_file = {AUTH_DIR}/{USERLIST}\n\
         pool_mode = {mode}\n\
         max_client_conn = {max_client}\n\
         default_pool_size = {pool}\n\
         ignore_startup_parameters = extra_float_digits,options\n\
         server_reset_query = DISCARD ALL\n\
         server_check_query = select 1\n\
         server_login_retry = 1\n\
         log_connections = 0\n\
         log_disconnections = 0\n",
        mode = pooler.pool_mode.as_str(),
        max_client = pooler.max_client_conn,
        pool = pooler.default_pool_size,
    )
}

/// PgBouncer authenticates clients and servers with SCRAM from the plain password.
pub fn userlist(cluster: &Cluster) -> String {
    format!(
        "\"{}\" \"{}\"\n",
        cluster.spec.database.owner, cluster.credentials.app
    )
}

fn labels(cluster: &Cluster) -> BTreeMap<String, String> {
    cluster_labels(&cluster.names.cluster, COMPONENT_POOLER)
}

fn selector(cluster: &Cluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_CLUSTER.to_owned(), cluster.names.cluster.clone()),
        (LABEL_COMPONENT.to_owned(), COMPONENT_POOLER.to_owned()),
    ])
}

pub fn config_map(cluster: &Cluster) -> ConfigMap {
    ConfigMap {
        metadata: cluster.component_meta(cluster.names.pooler(), COMPONENT_POOLER),
        data: Some(BTreeMap::from([(
            PGBOUNCER_INI.to_owned(),
            pgbouncer_ini(cluster),
        )])),
        ..ConfigMap::default()
    }
}

pub fn auth_secret(cluster: &Cluster) -> Secret {
    Secret {
        metadata: cluster.component_meta(cluster.names.pooler_auth_secret(), COMPONENT_POOLER),
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([(USERLIST.to_owned(), userlist(cluster))])),
        ..Secret::default()
    }
}

fn tcp_probe(period: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(POOLER_PORT),
            ..TCPSocketAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

pub fn deployment(cluster: &Cluster) -> Deployment {
    let hash = content_hash(&[
        pgbouncer_ini(cluster).as_bytes(),
        userlist(cluster).as_bytes(),
    ]);
    let container = Container {
        name: "pgbouncer".into(),
        image: Some(cluster.spec.image().to_owned()),
        image_pull_policy: Some(cluster.spec.image_pull_policy.as_str().to_owned()),
        command: Some(vec![
            "pgbouncer".into(),
            format!("{CONFIG_DIR}/{PGBOUNCER_INI}"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("pgbouncer".into()),
            container_port: POOLER_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(tcp_probe(5)),
        liveness_probe: Some(tcp_probe(10)),
        security_context: Some(restricted_container_security()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "config".into(),
                mount_path: CONFIG_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "auth".into(),
                mount_path: AUTH_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    Deployment {
        metadata: cluster.component_meta(cluster.names.pooler(), COMPONENT_POOLER),
        spec: Some(DeploymentSpec {
            replicas: Some(cluster.spec.pooler.instances),
            selector: LabelSelector {
                match_labels: Some(selector(cluster)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(cluster)),
                    annotations: Some(BTreeMap::from([(ANNOTATION_CONFIG_HASH.to_owned(), hash)])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    security_context: Some(restricted_pod_security(POSTGRES_UID)),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    volumes: Some(vec![
                        Volume {
                            name: "config".into(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: cluster.names.pooler(),
                                ..ConfigMapVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        Volume {
                            name: "auth".into(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(cluster.names.pooler_auth_secret()),
                                default_mode: Some(0o400),
                                ..SecretVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

pub fn service(cluster: &Cluster) -> Service {
    Service {
        metadata: cluster.component_meta(cluster.names.pooler(), COMPONENT_POOLER),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector(cluster)),
            ports: Some(vec![ServicePort {
                name: Some("pgbouncer".into()),
                port: POOLER_PORT,
                target_port: Some(IntOrString::String("pgbouncer".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::cluster;
    use serde_json::json;

    #[test]
    fn ini_carries_pool_settings() {
        let c = cluster(json!({"storage": {"size": "1Gi"},
            "pooler": {"poolMode": "session", "maxClientConn": 500, "defaultPoolSize": 30}}));
        let ini = pgbouncer_ini(&c);
        assert!(ini.contains("* = host=geo-rw.maps.svc port=5432"));
        assert!(ini.contains("pool_mode = session"));
        assert!(ini.contains("max_client_conn = 500"));
        assert!(ini.contains("default_pool_size = 30"));
        assert!(ini.contains("auth_type = scram-sha-256"));
    }

    #[test]
    fn default_mode_is_transaction() {
        let c = cluster(json!({"storage": {"size": "1Gi"}}));
        assert!(pgbouncer_ini(&c).contains("pool_mode = transaction"));
        assert_eq!(userlist(&c), "\"app\" \"app-pw\"\n");
    }

    #[test]
    fn deployment_rolls_on_config_change() {
        let a = cluster(json!({"storage": {"size": "1Gi"}}));
        let b = cluster(json!({"storage": {"size": "1Gi"}, "pooler": {"defaultPoolSize": 5}}));
        let hash = |c: &Cluster| {
            deployment(c)
                .spec
                .unwrap()
                .template
                .metadata
                .unwrap()
                .annotations
                .unwrap()[ANNOTATION_CONFIG_HASH]
                .clone()
        };
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(deployment(&a).spec.unwrap().replicas, Some(1));
    }
}
