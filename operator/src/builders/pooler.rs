//! PgBouncer: two poolers, each with its ConfigMap (`pgbouncer.ini`), Deployment and
//! Service, sharing one auth Secret (`userlist.txt`). `geodb pooler` runs PgBouncer and
//! reloads it when these change. `<name>-pooler` sends every database
//! to the read-write Service, `<name>-pooler-ro` to the read-only one.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    HTTPGetAction, PodSpec, PodTemplateSpec, Probe, Secret, SecretVolumeSource, Service,
    ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::instance::{restricted_container_security, restricted_pod_security};
use super::spread;
use super::Cluster;
use crate::names::{
    cluster_labels, COMPONENT_POOLER, COMPONENT_POOLER_RO, LABEL_CLUSTER, LABEL_COMPONENT,
    POOLER_LOOKUP, POOLER_PORT, POOLER_USER, POSTGRES_PORT,
};
use crate::pod_contract::{CA_CERT, POSTGRES_UID, TLS_CERT, TLS_KEY};
use crate::pooler::console::{ADMIN_USER, CONTROL_PORT, METRICS_PORT, READY_PATH, SOCKET_DIR};

/// Which Service a pooler sends connections to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    ReadOnly,
}

impl Access {
    pub const BOTH: [Access; 2] = [Access::ReadWrite, Access::ReadOnly];

    /// Name of the pooler's Deployment, Service and ConfigMap.
    pub fn name(self, cluster: &Cluster) -> String {
        match self {
            Access::ReadWrite => cluster.names.pooler(),
            Access::ReadOnly => cluster.names.pooler_ro(),
        }
    }

    pub fn component(self) -> &'static str {
        match self {
            Access::ReadWrite => COMPONENT_POOLER,
            Access::ReadOnly => COMPONENT_POOLER_RO,
        }
    }

    fn upstream(self, cluster: &Cluster) -> String {
        match self {
            Access::ReadWrite => cluster.service_host(&cluster.names.rw_service()),
            Access::ReadOnly => cluster.service_host(&cluster.names.ro_service()),
        }
    }
}

pub const PGBOUNCER_INI: &str = "pgbouncer.ini";
pub const USERLIST: &str = "userlist.txt";
/// Seconds PgBouncer keeps a DNS answer.
const DNS_MAX_TTL: u32 = 2;
/// Seconds a new server connection may take to connect, unless `pooler.settings` says.
const SERVER_CONNECT_TIMEOUT: u32 = 5;
pub const PGBOUNCER_HBA: &str = "pgbouncer_hba.conf";
const CONFIG_DIR: &str = "/etc/pgbouncer";
pub const AUTH_DIR: &str = "/etc/pgbouncer/auth";
pub const TLS_DIR: &str = "/etc/pgbouncer/tls";

pub fn pgbouncer_ini(cluster: &Cluster, access: Access) -> String {
    let pooler = &cluster.spec.pooler;
    let rw = access.upstream(cluster);
    let mut ini = format!(
        "; Written by geodb-operator from the GeoDatabase spec.\n\
         [databases]\n\
         * = host={rw} port={POSTGRES_PORT}\n\
         \n\
         [pgbouncer]\n\
         listen_addr = 0.0.0.0\n\
         listen_port = {POOLER_PORT}\n\
         unix_socket_dir = {SOCKET_DIR}\n\
         ; SCRAM over TLS for clients; the console only on the Unix socket, as the pod's\n\
         ; OS user (geodb pooler), never over TCP.\n\
         auth_type = hba\n\
         auth_hba_file = {CONFIG_DIR}/{PGBOUNCER_HBA}\n\
         auth_file = {AUTH_DIR}/{USERLIST}\n\
         ; Any login role but superusers and replication: its SCRAM verifier is looked up\n\
         ; (and passed through to PostgreSQL), so no application password is held here.\n\
         auth_user = {POOLER_USER}\n\
         auth_query = SELECT usename, passwd FROM {POOLER_LOOKUP}($1)\n\
         admin_users = {ADMIN_USER}\n\
         pool_mode = {mode}\n\
         max_client_conn = {max_client}\n\
         default_pool_size = {pool}\n\
         ignore_startup_parameters = extra_float_digits,options\n\
         server_reset_query = DISCARD ALL\n\
         server_check_query = select 1\n\
         server_login_retry = 1\n\
         log_connections = 0\n\
         log_disconnections = 0\n\
         ; TLS both ways: clients must use it, and the server's chain and name are checked.\n\
         client_tls_sslmode = require\n\
         client_tls_cert_file = {TLS_DIR}/{TLS_CERT}\n\
         client_tls_key_file = {TLS_DIR}/{TLS_KEY}\n\
         client_tls_protocols = secure\n\
         server_tls_sslmode = verify-full\n\
         server_tls_ca_file = {TLS_DIR}/{CA_CERT}\n\
         server_tls_protocols = secure\n",
        mode = pooler.pool_mode.as_str(),
        max_client = pooler.max_client_conn,
        pool = pooler.default_pool_size,
    );
    let _ = writeln!(ini, "reserve_pool_size = {}", pooler.reserve_pool_size);
    let _ = writeln!(ini, "server_idle_timeout = {}", pooler.server_idle_timeout);
    let _ = writeln!(ini, "query_wait_timeout = {}", pooler.query_wait_timeout);
    let _ = writeln!(ini, "server_lifetime = {}", pooler.server_lifetime);
    // The read-write pooler follows an instance's own Service, whose address changes when
    // its pod is recreated: PgBouncer's own DNS cache (15 s by default, whatever the
    // record's TTL) would keep sending new server connections to the gone address.
    let _ = writeln!(ini, "dns_max_ttl = {DNS_MAX_TTL}");
    // An address nobody answers at (a gone pod, a cut network) holds the clients waiting
    // for a server connection this long; PgBouncer's 15 s default is made for the WAN.
    if !pooler.settings.contains_key("server_connect_timeout") {
        let _ = writeln!(ini, "server_connect_timeout = {SERVER_CONNECT_TIMEOUT}");
    }
    // PgBouncer 1.21+; `geodb pooler` leaves it out for an older one.
    let _ = writeln!(
        ini,
        "max_prepared_statements = {}",
        pooler.max_prepared_statements
    );
    // Only keys the schema lists, plain values: nothing here can override the above.
    for (key, value) in &pooler.settings {
        let _ = writeln!(ini, "{key} = {value}");
    }
    ini
}

/// Only the lookup role's password: every other role is looked up (`auth_query`). The
/// console's user is listed (PgBouncer knows only listed users) without a password:
/// `pgbouncer_hba.conf` admits it by `peer` on the socket and rejects it over TCP.
pub fn userlist(cluster: &Cluster) -> String {
    format!(
        "\"{POOLER_USER}\" \"{}\"\n\"{ADMIN_USER}\" \"\"\n",
        cluster.credentials.pooler
    )
}

/// Who may log in how: the console's user by `peer` on the Unix socket only; everyone
/// else with SCRAM over TLS.
pub fn pgbouncer_hba() -> String {
    format!(
        "local pgbouncer {ADMIN_USER} peer\n\
         host all {ADMIN_USER} 0.0.0.0/0 reject\n\
         host all {ADMIN_USER} ::/0 reject\n\
         host all {POOLER_USER} 0.0.0.0/0 reject\n\
         host all {POOLER_USER} ::/0 reject\n\
         hostssl all all 0.0.0.0/0 scram-sha-256\n\
         hostssl all all ::/0 scram-sha-256\n"
    )
}

fn labels(cluster: &Cluster, access: Access) -> BTreeMap<String, String> {
    cluster_labels(&cluster.names.cluster, access.component())
}

/// Selector of one pooler's pods.
pub fn selector(cluster: &Cluster, access: Access) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_CLUSTER.to_owned(), cluster.names.cluster.clone()),
        (LABEL_COMPONENT.to_owned(), access.component().to_owned()),
    ])
}

pub fn config_map(cluster: &Cluster, access: Access) -> ConfigMap {
    ConfigMap {
        metadata: cluster.component_meta(access.name(cluster), access.component()),
        data: Some(BTreeMap::from([
            (PGBOUNCER_INI.to_owned(), pgbouncer_ini(cluster, access)),
            (PGBOUNCER_HBA.to_owned(), pgbouncer_hba()),
        ])),
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

fn container(cluster: &Cluster) -> Container {
    Container {
        name: "pgbouncer".into(),
        image: Some(cluster.spec.image().to_owned()),
        image_pull_policy: Some(cluster.spec.image_pull_policy.as_str().to_owned()),
        // PgBouncer under `geodb pooler`, which reloads it when the certificate is renewed.
        command: Some(vec![
            "geodb".into(),
            "pooler".into(),
            format!("--config={CONFIG_DIR}/{PGBOUNCER_INI}"),
            format!("--watch={CONFIG_DIR}"),
            format!("--watch={AUTH_DIR}"),
            format!("--watch={TLS_DIR}"),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("pgbouncer".into()),
                container_port: POOLER_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("control".into()),
                container_port: CONTROL_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("metrics".into()),
                container_port: METRICS_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        // Ready when PgBouncer itself answers (its console, through `geodb pooler`).
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some(READY_PATH.into()),
                port: IntOrString::Int(CONTROL_PORT),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(5),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        liveness_probe: Some(tcp_probe(10)),
        resources: cluster.spec.pooler.resources.clone(),
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
            VolumeMount {
                name: "run".into(),
                mount_path: SOCKET_DIR.into(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "tls".into(),
                mount_path: TLS_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    }
}

pub fn deployment(cluster: &Cluster, access: Access) -> Deployment {
    Deployment {
        metadata: cluster.component_meta(access.name(cluster), access.component()),
        spec: Some(DeploymentSpec {
            replicas: Some(cluster.spec.pooler.instances),
            selector: LabelSelector {
                match_labels: Some(selector(cluster, access)),
                ..LabelSelector::default()
            },
            strategy: spread::pooler_strategy(&cluster.spec.scheduling),
            template: PodTemplateSpec {
                // No hash of the configuration: `geodb pooler` reloads PgBouncer when
                // the kubelet updates it, so a change drops no client.
                metadata: Some(ObjectMeta {
                    labels: Some(labels(cluster, access)),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(cluster, access)),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn pod_spec(cluster: &Cluster, access: Access) -> PodSpec {
    let pod = PodSpec {
        containers: vec![container(cluster)],
        security_context: Some(restricted_pod_security(POSTGRES_UID)),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        volumes: Some(vec![
            Volume {
                name: "config".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: access.name(cluster),
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
            Volume {
                name: "run".into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".into()),
                    size_limit: Some(Quantity("1Mi".into())),
                }),
                ..Volume::default()
            },
            Volume {
                name: "tls".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(cluster.served_tls_secret()),
                    default_mode: Some(0o400),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            },
        ]),
        ..PodSpec::default()
    };
    spread::place(pod, &cluster.spec.scheduling, &selector(cluster, access))
}

pub fn service(cluster: &Cluster, access: Access) -> Service {
    Service {
        metadata: cluster.component_meta(access.name(cluster), access.component()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector(cluster, access)),
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
        let ini = pgbouncer_ini(&c, Access::ReadWrite);
        assert!(ini.contains("* = host=geo-rw.maps.svc port=5432"));
        assert!(pgbouncer_ini(&c, Access::ReadOnly).contains("* = host=geo-ro.maps.svc port=5432"));
        assert!(ini.contains("pool_mode = session"));
        assert!(ini.contains("max_client_conn = 500"));
        assert!(ini.contains("default_pool_size = 30"));
        assert!(ini.contains("auth_type = hba"));
        assert!(ini.contains("admin_users = postgres"));
        assert!(ini.contains("server_lifetime = 3600\n"));
        assert!(ini.contains("query_wait_timeout = 120\n"));
    }

    #[test]
    fn further_settings_follow_the_operators_own() {
        let c = cluster(json!({"storage": {"size": "1Gi"},
            "pooler": {"reservePoolSize": 5, "serverLifetime": 300,
                       "settings": {"query_timeout": "30", "min_pool_size": "2"}}}));
        let ini = pgbouncer_ini(&c, Access::ReadWrite);
        assert!(ini.contains("reserve_pool_size = 5\n"));
        assert!(ini.contains("server_lifetime = 300\n"));
        assert!(
            ini.ends_with("min_pool_size = 2\nquery_timeout = 30\n"),
            "{ini}"
        );
    }

    #[test]
    fn dns_answers_and_server_connects_are_bounded_unless_set() {
        let c = cluster(json!({"storage": {"size": "1Gi"}}));
        let ini = pgbouncer_ini(&c, Access::ReadWrite);
        assert!(ini.contains("dns_max_ttl = 2\n"));
        assert!(ini.contains("server_connect_timeout = 5\n"));
        let c = cluster(json!({"storage": {"size": "1Gi"},
            "pooler": {"settings": {"server_connect_timeout": "20"}}}));
        let ini = pgbouncer_ini(&c, Access::ReadWrite);
        assert_eq!(ini.matches("server_connect_timeout").count(), 1, "{ini}");
        assert!(ini.ends_with("server_connect_timeout = 20\n"), "{ini}");
    }

    #[test]
    fn the_console_user_logs_in_by_peer_on_the_socket_only() {
        let hba = pgbouncer_hba();
        let rules: Vec<&str> = hba.lines().collect();
        assert_eq!(rules[0], "local pgbouncer postgres peer");
        // Rejected over TCP before the SCRAM lines could admit it.
        assert!(rules[1..5]
            .iter()
            .all(|r| r.starts_with("host all ") && r.ends_with("reject")));
        assert!(rules[5..]
            .iter()
            .all(|r| r.starts_with("hostssl all all") && r.ends_with("scram-sha-256")));
    }

    #[test]
    fn default_mode_is_transaction() {
        let c = cluster(json!({"storage": {"size": "1Gi"}}));
        assert!(pgbouncer_ini(&c, Access::ReadWrite).contains("pool_mode = transaction"));
        assert_eq!(
            userlist(&c),
            "\"geodb_pooler\" \"pooler-pw\"\n\"postgres\" \"\"\n"
        );
    }

    #[test]
    fn a_config_change_is_reloaded_not_rolled() {
        let a = cluster(json!({"storage": {"size": "1Gi"}}));
        let b = cluster(json!({"storage": {"size": "1Gi"}, "pooler": {"defaultPoolSize": 5}}));
        let template = |c: &Cluster| deployment(c, Access::ReadWrite).spec.unwrap().template;
        assert_eq!(template(&a), template(&b));
        assert_ne!(
            config_map(&a, Access::ReadWrite),
            config_map(&b, Access::ReadWrite)
        );
        assert_eq!(
            deployment(&a, Access::ReadWrite).spec.unwrap().replicas,
            Some(1)
        );
    }

    #[test]
    fn the_two_poolers_select_their_own_pods() {
        let c = cluster(json!({"storage": {"size": "1Gi"}}));
        let rw = service(&c, Access::ReadWrite)
            .spec
            .unwrap()
            .selector
            .unwrap();
        let ro = service(&c, Access::ReadOnly)
            .spec
            .unwrap()
            .selector
            .unwrap();
        assert_ne!(rw, ro);
        let ro_pods = deployment(&c, Access::ReadOnly)
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .labels
            .unwrap();
        assert!(ro.iter().all(|(k, v)| ro_pods.get(k) == Some(v)));
        assert!(!rw.iter().all(|(k, v)| ro_pods.get(k) == Some(v)));
        assert_eq!(Access::ReadOnly.name(&c), "geo-pooler-ro");
    }
}
