//! Pure builders: from a validated GeoDatabase and what was read from the API, the
//! objects the cluster should have. Nothing here talks to the API server.

pub mod archive;
pub mod backup;
pub mod config;
pub mod instance;
pub mod maintenance;
pub mod migrations;
pub mod monitoring;
pub mod network;
pub mod pooler;
pub mod rbac;
pub mod restart;
pub mod secrets;
pub mod seed;
pub mod services;
pub mod spread;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, EnvVar, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::api::{GeoDatabase, GeoDatabaseSpec};
use crate::names::{cluster_labels, Names};

/// Passwords of the three roles; generated once, then always read back from their Secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub superuser: String,
    pub replication: String,
    pub app: String,
    pub pooler: String,
}

impl std::fmt::Debug for Credentials {
    // Passwords never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

/// Everything the builders need: the GeoDatabase plus decisions made in the read and
/// validate steps.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub names: Names,
    pub namespace: String,
    pub owner: OwnerReference,
    pub spec: GeoDatabaseSpec,
    /// Instances that should exist, in ordinal order.
    pub instances: Vec<String>,
    /// The instance that is (or will bootstrap as) the primary.
    pub primary: String,
    pub credentials: Credentials,
    /// The first primary has run; empty instances clone instead of running initdb.
    pub bootstrapped: bool,
    /// A streaming replica serves reads (base backups prefer one).
    pub standby_ready: bool,
    /// The value of the backup-request annotation: one base backup per value.
    pub backup_request: Option<String>,
    /// The value of the vacuum-request annotation: one VACUUM run per value.
    pub vacuum_request: Option<String>,
    /// The value of the dump-request annotation: one logical dump per value.
    pub dump_request: Option<String>,
    /// The operator's own namespace, when known: the NetworkPolicy admits its pods.
    pub operator_namespace: Option<String>,
    /// The CA and the server certificate, once the decide step has them.
    pub tls: Option<Tls>,
    /// The digest of `spec.migrations` and its ConfigMaps' contents, once their Job may
    /// run (a confirmed primary) or runs already.
    pub migrations: Option<String>,
    /// The digest of `spec.seed`, once its Job may run (the migrations succeeded) or runs
    /// already.
    pub seed: Option<String>,
}

/// A cluster's CA and its current server certificate (see `certs`), and the user's
/// certificate when the spec names one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    pub ca: crate::certs::Issued,
    pub server: crate::certs::Issued,
    /// A hash of the names the server certificate holds.
    pub names: String,
    /// Served instead of `server` (which is still kept, for a way back).
    pub provided: Option<Provided>,
}

/// The user's certificate (`spec.tls.serverSecret`): mounted as it is, never copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provided {
    pub secret: String,
    /// Its `ca.crt`: what clients and the operator trust.
    pub ca_pem: String,
}

impl Tls {
    /// The CA that clients are to trust for the certificate served.
    pub fn trusted_ca(&self) -> &str {
        self.provided
            .as_ref()
            .map_or(self.ca.cert_pem.as_str(), |p| p.ca_pem.as_str())
    }
}

impl Cluster {
    /// `None` when the object has no namespace or uid (not yet stored by the API server).
    pub fn new(
        db: &GeoDatabase,
        instances: Vec<String>,
        primary: String,
        credentials: Credentials,
    ) -> Option<Self> {
        Some(Self {
            names: Names::new(db),
            namespace: db.namespace()?,
            owner: db.controller_owner_ref(&())?,
            spec: db.spec.clone(),
            instances,
            primary,
            credentials,
            bootstrapped: false,
            standby_ready: false,
            backup_request: request(db, crate::names::ANNOTATION_BACKUP_REQUEST),
            vacuum_request: request(db, crate::names::ANNOTATION_VACUUM_REQUEST),
            dump_request: request(db, crate::names::ANNOTATION_DUMP_REQUEST),
            operator_namespace: None,
            tls: None,
            migrations: None,
            seed: None,
        })
    }

    /// Metadata of an owned object: namespace, labels, controller owner reference.
    pub fn meta(&self, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }

    pub fn component_meta(&self, name: String, component: &str) -> ObjectMeta {
        self.meta(name, cluster_labels(&self.names.cluster, component))
    }

    /// The Secret the pods mount their server certificate from: the user's, or the one
    /// the operator issues.
    pub fn served_tls_secret(&self) -> String {
        self.tls
            .as_ref()
            .and_then(|t| t.provided.as_ref())
            .map_or_else(|| self.names.server_tls_secret(), |p| p.secret.clone())
    }

    /// In-cluster DNS name of a Service of this cluster.
    pub fn service_host(&self, service: &str) -> String {
        format!("{service}.{}.svc", self.namespace)
    }
}

/// A request annotation's value; blank counts as none.
fn request(db: &GeoDatabase, annotation: &str) -> Option<String> {
    db.annotations()
        .get(annotation)
        .filter(|v| !v.trim().is_empty())
        .cloned()
}

/// Everything a cluster should have, as built from its `Cluster`.
#[derive(Clone, Debug)]
pub struct Resources {
    /// The roles' credentials: created once, never rewritten.
    pub credentials: Vec<Secret>,
    /// The instance pods' identity and its binding (not watched).
    pub service_account: ServiceAccount,
    pub role_binding: RoleBinding,
    pub config_maps: Vec<ConfigMap>,
    /// Connection Secrets and the pooler's auth Secret.
    pub secrets: Vec<Secret>,
    pub services: Vec<Service>,
    pub deployments: Vec<Deployment>,
    pub statefulsets: Vec<StatefulSet>,
    /// Scheduled base backups and dumps, and those the request annotations ask for.
    pub cron_jobs: Vec<CronJob>,
    pub jobs: Vec<Job>,
    pub network_policies: Vec<NetworkPolicy>,
    /// The instances' and the poolers' PodDisruptionBudgets.
    pub pod_disruption_budgets: Vec<PodDisruptionBudget>,
}

/// Build every object of `cluster`.
pub fn build(cluster: &Cluster) -> Resources {
    let mut config_maps = vec![config::config_map(cluster)];
    let mut secrets = secrets::connection_secrets(cluster);
    let mut services = services::services(cluster);
    let mut deployments = Vec::new();
    if cluster.spec.pooler.enabled {
        secrets.push(pooler::auth_secret(cluster));
        for access in pooler::Access::BOTH {
            config_maps.push(pooler::config_map(cluster, access));
            services.push(pooler::service(cluster, access));
            deployments.push(pooler::deployment(cluster, access));
        }
    }
    let (ca, server_tls) = secrets::tls_secrets(cluster).unzip();
    secrets.extend(server_tls);
    Resources {
        credentials: secrets::credential_secrets(cluster)
            .into_iter()
            .chain(ca)
            .collect(),
        service_account: rbac::service_account(cluster),
        role_binding: rbac::role_binding(cluster),
        config_maps,
        secrets,
        services,
        deployments,
        statefulsets: cluster
            .instances
            .iter()
            .map(|instance| instance::statefulset(cluster, instance))
            .collect(),
        cron_jobs: backup::Task::ALL
            .iter()
            .filter_map(|task| backup::cron_job(cluster, *task))
            .chain(maintenance::cron_job(cluster))
            .collect(),
        jobs: backup::Task::ALL
            .iter()
            .filter_map(|task| backup::requested_job(cluster, *task))
            .chain(migrations::job(cluster))
            .chain(seed::job(cluster))
            .chain(maintenance::requested_job(cluster))
            .collect(),
        network_policies: network::network_policy(cluster).into_iter().collect(),
        pod_disruption_budgets: spread::disruption_budgets(cluster),
    }
}

/// An environment variable with a literal value.
pub fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// Stable short hash of some content, for annotations and change detection.
pub fn content_hash(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher
        .finalize()
        .iter()
        .take(10)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::api::GeoDatabase;

    pub fn geodatabase(spec: serde_json::Value) -> GeoDatabase {
        let mut db: GeoDatabase = serde_json::from_value(serde_json::json!({
            "apiVersion": "geodb.io/v1alpha1",
            "kind": "GeoDatabase",
            "metadata": {"name": "geo", "namespace": "maps", "uid": "uid-1", "generation": 1},
            "spec": spec,
        }))
        .unwrap();
        db.status = None;
        db
    }

    /// The configuration hash annotation of a pod template.
    pub fn template_hash(template: &k8s_openapi::api::core::v1::PodTemplateSpec) -> String {
        template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[crate::names::ANNOTATION_CONFIG_HASH]
            .clone()
    }

    pub fn cluster(spec: serde_json::Value) -> Cluster {
        let db = geodatabase(spec);
        let instances: Vec<String> = (1..=db.spec.instances as u32)
            .map(|i| format!("geo-{i}"))
            .collect();
        Cluster::new(
            &db,
            instances,
            "geo-1".into(),
            Credentials {
                superuser: "su-pw".into(),
                replication: "repl-pw".into(),
                app: "app-pw".into(),
                pooler: "pooler-pw".into(),
            },
        )
        .unwrap()
    }

    #[test]
    fn build_makes_every_object() {
        let r = build(&cluster(
            serde_json::json!({"instances": 3, "storage": {"size": "1Gi"}}),
        ));
        assert_eq!(r.statefulsets.len(), 3);
        assert_eq!(r.credentials.len(), 4);
        // Instance config and two poolers; rw, ro, 3 headless, metrics, 2 pooler Services.
        assert_eq!(r.config_maps.len(), 3);
        assert_eq!(r.services.len(), 8);
        assert_eq!(r.deployments.len(), 2);
        assert_eq!(r.pod_disruption_budgets.len(), 4);
        let without = build(&cluster(
            serde_json::json!({"storage": {"size": "1Gi"}, "pooler": {"enabled": false}}),
        ));
        assert!(without.deployments.is_empty());
    }

    #[test]
    fn hash_separates_parts() {
        assert_ne!(content_hash(&[b"ab", b"c"]), content_hash(&[b"a", b"bc"]));
        assert_eq!(content_hash(&[b"x"]).len(), 20);
    }

    #[test]
    fn credentials_debug_hides_passwords() {
        let c = cluster(serde_json::json!({"storage": {"size": "1Gi"}}));
        assert!(!format!("{:?}", c).contains("app-pw"));
    }
}
