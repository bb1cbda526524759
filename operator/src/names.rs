//! Names and labels of everything a GeoDatabase owns. One place, so builders, the
//! reconciler and the tests agree.

use std::collections::BTreeMap;

use crate::api::{GeoDatabase, Role};
use kube::ResourceExt;

/// Field manager for server-side apply.
pub const FIELD_MANAGER: &str = "geodb-operator";
/// Finalizer that lets the operator honour the deletion policy.
pub const FINALIZER: &str = "geodb.io/finalizer";

pub const LABEL_CLUSTER: &str = "geodb.io/cluster";
pub const LABEL_INSTANCE: &str = "geodb.io/instance";
/// Set on instance pods by the operator (never by the pod template) so that it stays
/// true after a failover: Services select on it.
pub const LABEL_ROLE: &str = "geodb.io/role";
/// Set by the operator on replica pods: `true` while the replica streams within
/// `maxLagBytes`. The `-ro` Service selects on it.
pub const LABEL_SERVING_READS: &str = "geodb.io/serving-reads";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "geodb-operator";
/// Pod template annotation: hash of the configuration the pod runs with, so that a
/// configuration change rolls the pods.
pub const ANNOTATION_CONFIG_HASH: &str = "geodb.io/config-hash";

/// On a data volume kept by a deleted GeoDatabase (`deletionPolicy: Retain`): the instance
/// that was the primary, and its timeline, when it was deleted. A GeoDatabase created
/// again with the same name starts with that primary instead of assuming one.
pub const ANNOTATION_LAST_PRIMARY: &str = "geodb.io/last-primary";
pub const ANNOTATION_LAST_TIMELINE: &str = "geodb.io/last-timeline";
/// On a GeoDatabase: every new value runs one base backup now (a Job of its own).
pub const ANNOTATION_BACKUP_REQUEST: &str = "geodb.io/backup-request";
/// A new value starts one VACUUM run (`spec.maintenance.vacuum`).
pub const ANNOTATION_VACUUM_REQUEST: &str = "geodb.io/vacuum-request";
/// A new value asks for one logical dump (`spec.backup.dumps`).
pub const ANNOTATION_DUMP_REQUEST: &str = "geodb.io/dump-request";
/// On a credentials Secret kept by a deleted GeoDatabase: a GeoDatabase created again
/// with the same name adopts it, so its roles keep their passwords.
/// On the server certificate's Secret: when it ends (Unix seconds) and a hash of the
/// names it holds, so renewal needs no certificate parser.
pub const ANNOTATION_TLS_NOT_AFTER: &str = "geodb.io/tls-not-after";
pub const ANNOTATION_TLS_NAMES: &str = "geodb.io/tls-names";
pub const ANNOTATION_RETAINED: &str = "geodb.io/retained-by-deleted-geodatabase";

/// ClusterRole (installed with the operator) that instance pods are bound to in their
/// namespace: read GeoDatabases.
pub const INSTANCE_CLUSTER_ROLE: &str = "geodb-instance";
pub const COMPONENT_DATABASE: &str = "database";
pub const COMPONENT_POOLER: &str = "pooler";
pub const COMPONENT_POOLER_RO: &str = "pooler-ro";
pub const COMPONENT_BACKUP: &str = "backup";
pub const COMPONENT_DUMP: &str = "dump";
pub const COMPONENT_MIGRATION: &str = "migration";
pub const COMPONENT_SEED: &str = "seed";
pub const COMPONENT_VACUUM: &str = "vacuum";
pub const COMPONENT_METRICS: &str = "metrics";

pub const POSTGRES_PORT: i32 = 5432;
pub const POOLER_PORT: i32 = 6432;
pub const SUPERUSER: &str = "postgres";
pub const REPLICATION_USER: &str = "streaming_replica";
/// The pooler's lookup role: only [`POOLER_LOOKUP`] answers it (see `agent::roles`).
pub const POOLER_USER: &str = "geodb_pooler";
/// The function PgBouncer's `auth_query` calls for a login role's SCRAM verifier.
pub const POOLER_LOOKUP: &str = "pg_catalog.geodb_pooler_lookup";
pub const PGDATA_VOLUME: &str = "pgdata";

/// Names derived from the GeoDatabase name. The schema caps that name at 40 characters so
/// every derived name stays a valid DNS label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    pub cluster: String,
}

impl Names {
    pub fn new(db: &GeoDatabase) -> Self {
        Self {
            cluster: db.name_any(),
        }
    }
    pub fn instance(&self, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.cluster)
    }
    /// Ordinal of an instance name of this cluster (`pg-3` -> 3).
    pub fn ordinal(&self, instance: &str) -> Option<u32> {
        instance
            .strip_prefix(&self.cluster)?
            .strip_prefix('-')?
            .parse()
            .ok()
    }
    pub fn network_policy(&self) -> String {
        format!("{}-network", self.cluster)
    }
    pub fn config_map(&self) -> String {
        format!("{}-config", self.cluster)
    }
    pub fn rw_service(&self) -> String {
        format!("{}-rw", self.cluster)
    }
    pub fn ro_service(&self) -> String {
        format!("{}-ro", self.cluster)
    }
    /// Headless Service of the instances' `/metrics` (port `metrics`).
    pub fn metrics_service(&self) -> String {
        format!("{}-metrics", self.cluster)
    }
    pub fn pooler(&self) -> String {
        format!("{}-pooler", self.cluster)
    }
    pub fn pooler_ro(&self) -> String {
        format!("{}-pooler-ro", self.cluster)
    }
    /// PodDisruptionBudget of the primary instance (each pooler's is named as the pooler).
    pub fn primary_budget(&self) -> String {
        format!("{}-primary", self.cluster)
    }
    /// PodDisruptionBudget of the replica instances.
    pub fn replicas_budget(&self) -> String {
        format!("{}-replicas", self.cluster)
    }
    /// The scheduled base backups.
    pub fn backup_cron_job(&self) -> String {
        format!("{}-backup", self.cluster)
    }
    /// The backup that one value of the backup-request annotation asked for.
    pub fn requested_backup_job(&self, request_hash: &str) -> String {
        format!("{}-backup-{request_hash}", self.cluster)
    }
    /// The scheduled logical dumps.
    pub fn dump_cron_job(&self) -> String {
        format!("{}-dump", self.cluster)
    }
    /// The dump that one value of the dump-request annotation asked for.
    pub fn requested_dump_job(&self, request_hash: &str) -> String {
        format!("{}-dump-{request_hash}", self.cluster)
    }
    pub fn vacuum_cron_job(&self) -> String {
        format!("{}-vacuum", self.cluster)
    }
    pub fn requested_vacuum_job(&self, request_hash: &str) -> String {
        format!("{}-vacuum-{request_hash}", self.cluster)
    }
    /// The run of schema migrations for inputs with this digest.
    pub fn migration_job(&self, inputs_hash: &str) -> String {
        format!("{}-migrate-{inputs_hash}", self.cluster)
    }
    /// The seed run for `spec.seed` settings with this digest.
    pub fn seed_job(&self, settings_hash: &str) -> String {
        format!("{}-seed-{settings_hash}", self.cluster)
    }
    pub fn app_pooler_ro_secret(&self) -> String {
        format!("{}-app-pooler-ro", self.cluster)
    }
    pub fn pooler_auth_secret(&self) -> String {
        format!("{}-pooler-auth", self.cluster)
    }
    /// The cluster's CA (certificate and key): the operator's only.
    pub fn ca_secret(&self) -> String {
        format!("{}-ca", self.cluster)
    }
    /// The server certificate, its key and the CA certificate, for the pods.
    pub fn server_tls_secret(&self) -> String {
        format!("{}-server-tls", self.cluster)
    }
    pub fn superuser_secret(&self) -> String {
        format!("{}-superuser", self.cluster)
    }
    pub fn replication_secret(&self) -> String {
        format!("{}-replication", self.cluster)
    }
    pub fn pooler_login_secret(&self) -> String {
        format!("{}-pooler-login", self.cluster)
    }
    pub fn app_secret(&self) -> String {
        format!("{}-app", self.cluster)
    }
    pub fn app_rw_secret(&self) -> String {
        format!("{}-app-rw", self.cluster)
    }
    pub fn app_ro_secret(&self) -> String {
        format!("{}-app-ro", self.cluster)
    }
    pub fn app_pooler_secret(&self) -> String {
        format!("{}-app-pooler", self.cluster)
    }
    /// Pod of an instance: each instance is a one-pod StatefulSet.
    pub fn pod(instance: &str) -> String {
        format!("{instance}-0")
    }
    /// ServiceAccount (and RoleBinding) of the instance pods.
    pub fn instance_service_account(&self) -> String {
        format!("{}-instance", self.cluster)
    }
    /// Physical replication slot of an instance on the primary.
    pub fn slot(instance: &str) -> String {
        format!("geodb_{}", instance.replace('-', "_"))
    }
    /// The Lease the primary holds to take writes (see `agent::lease`).
    pub fn primary_lease(cluster: &str) -> String {
        format!("{cluster}-primary")
    }
    /// PVC created from the instance StatefulSet's volume claim template.
    pub fn pvc(instance: &str) -> String {
        format!("{PGDATA_VOLUME}-{instance}-0")
    }
}

/// Labels on every object of a cluster.
pub fn cluster_labels(cluster: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "geodb".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), cluster.to_owned()),
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (LABEL_COMPONENT.to_owned(), component.to_owned()),
        (LABEL_CLUSTER.to_owned(), cluster.to_owned()),
    ])
}

/// Labels of one instance's objects (StatefulSet, pod, PVC, headless Service).
pub fn instance_labels(cluster: &str, instance: &str) -> BTreeMap<String, String> {
    let mut labels = cluster_labels(cluster, COMPONENT_DATABASE);
    labels.insert(LABEL_INSTANCE.to_owned(), instance.to_owned());
    labels
}

/// Selector of the pods that have a role; replicas only while they serve reads.
pub fn role_selector(cluster: &str, role: Role) -> BTreeMap<String, String> {
    let mut selector = BTreeMap::from([
        (LABEL_CLUSTER.to_owned(), cluster.to_owned()),
        (LABEL_COMPONENT.to_owned(), COMPONENT_DATABASE.to_owned()),
        (LABEL_ROLE.to_owned(), role.as_str().to_owned()),
    ]);
    if role == Role::Replica {
        selector.insert(LABEL_SERVING_READS.to_owned(), "true".to_owned());
    }
    selector
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_round_trip() {
        let names = Names {
            cluster: "geo".into(),
        };
        assert_eq!(names.instance(2), "geo-2");
        assert_eq!(names.ordinal("geo-2"), Some(2));
        assert_eq!(names.ordinal("geo-rw"), None);
        assert_eq!(names.ordinal("geox-2"), None);
        assert_eq!(Names::pvc("geo-2"), "pgdata-geo-2-0");
        assert_eq!(Names::slot("my-geo-2"), "geodb_my_geo_2");
    }
}
