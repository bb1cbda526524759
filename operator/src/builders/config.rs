//! The instance ConfigMap: `postgresql.conf` and `pg_hba.conf`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::restart::needs_restart;
use super::{content_hash, Cluster};
use crate::names::{COMPONENT_DATABASE, POSTGRES_PORT, REPLICATION_USER};
use crate::pod_contract::{
    BOOTSTRAPPED_KEY, CONFIG_DIR, PG_HBA_CONF, PG_IDENT_CONF, POSTGRESQL_CONF, SOCKET_DIR,
    TLS_CERT, TLS_DIR, TLS_KEY,
};
use crate::quantity::parse_quantity;

/// Settings the operator needs; user parameters cannot override them (each is reserved
/// in `api::postgresql`, which a test holds them to) and come after them.
fn managed_settings() -> Vec<(&'static str, String)> {
    vec![
        ("listen_addresses", "*".into()),
        ("port", POSTGRES_PORT.to_string()),
        ("unix_socket_directories", SOCKET_DIR.into()),
        ("hba_file", format!("{CONFIG_DIR}/{PG_HBA_CONF}")),
        ("ident_file", format!("{CONFIG_DIR}/{PG_IDENT_CONF}")),
        ("password_encryption", "scram-sha-256".into()),
        ("wal_level", "replica".into()),
        ("hot_standby", "on".into()),
        ("logging_collector", "off".into()),
        ("log_destination", "stderr".into()),
        // pg_rewind brings a failed primary back as a replica; it needs hint bits logged.
        ("wal_log_hints", "on".into()),
        // After a promotion, replicas follow the new primary's timeline.
        ("recovery_target_timeline", "latest".into()),
        // Every network login is over TLS (`pg_hba_conf`); a renewed certificate is
        // read on reload, which the agent sends when the mounted files change.
        ("ssl", "on".into()),
        ("ssl_cert_file", format!("{TLS_DIR}/{TLS_CERT}")),
        ("ssl_key_file", format!("{TLS_DIR}/{TLS_KEY}")),
        ("ssl_min_protocol_version", "TLSv1.2".into()),
    ]
}

/// `synchronous_standby_names` for the spec: any one replica (application_name is the
/// instance name) must confirm each commit. `*` keeps the value independent of the
/// instance count, so scaling changes no configuration.
fn synchronous_settings(cluster: &Cluster) -> Vec<(&'static str, String)> {
    if cluster.spec.replication.synchronous {
        vec![("synchronous_standby_names", "ANY 1 (*)".into())]
    } else {
        vec![]
    }
}

/// WAL kept for replicas, in MB of a data volume of `storage` (a quantity): slots may hold
/// at most a fifth of the volume (at least 64MB), so a replica that is down for long
/// cannot fill the primary's disk; its slot is then invalidated and it must clone again.
/// Without a slot, a twentieth (at most 512MB) is kept for a replica that reconnects.
fn wal_retention(storage: &str) -> (String, String) {
    let mb = parse_quantity(storage).map_or(1024.0, |bytes| bytes / f64::from(1 << 20));
    let slot_keep = (mb / 5.0).max(64.0) as u64;
    let keep = (mb / 20.0).clamp(16.0, 512.0) as u64;
    (format!("{slot_keep}MB"), format!("{keep}MB"))
}

/// Defaults a user may override.
fn default_settings(cluster: &Cluster) -> Vec<(&'static str, String)> {
    let (slot_keep, keep) = wal_retention(&cluster.spec.storage.size);
    vec![
        ("max_connections", "100".into()),
        ("max_wal_senders", "10".into()),
        ("max_replication_slots", "10".into()),
        ("wal_keep_size", keep),
        ("max_slot_wal_keep_size", slot_keep),
        ("shared_preload_libraries", "pg_stat_statements".into()),
        ("log_min_duration_statement", "100ms".into()),
        ("log_line_prefix", "%m [%p] %q%u@%d ".into()),
        // A failover depends on noticing a dead peer in seconds, not minutes.
        ("wal_receiver_timeout", "5s".into()),
        ("wal_sender_timeout", "5s".into()),
        ("wal_receiver_status_interval", "1s".into()),
        ("wal_retrieve_retry_interval", "1s".into()),
        // A peer cut off without a reset (a partition) must not hold a backend or a
        // WAL sender for the kernel's retransmission timeout (many minutes): a sender
        // stuck writing to it keeps its slot, and a checkpoint that must invalidate
        // that slot waits for it.
        ("tcp_user_timeout", "10s".into()),
        ("tcp_keepalives_idle", "5".into()),
        ("tcp_keepalives_interval", "2".into()),
        ("tcp_keepalives_count", "3".into()),
        ("hot_standby_feedback", "on".into()),
    ]
}

/// Effective value of a setting (user parameter, else the operator default).
pub fn effective_setting(cluster: &Cluster, name: &str) -> Option<String> {
    cluster
        .spec
        .postgresql
        .parameters
        .get(name)
        .cloned()
        .or_else(|| {
            default_settings(cluster)
                .into_iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v)
        })
}

/// Every setting the configuration file sets, in file order: the operator's, then the
/// defaults the user did not override, then the user's.
fn settings(cluster: &Cluster) -> Vec<(String, String)> {
    let user = &cluster.spec.postgresql.parameters;
    let owned = |(k, v): (&str, String)| (k.to_owned(), v);
    let mut all: Vec<(String, String)> = managed_settings()
        .into_iter()
        .chain(synchronous_settings(cluster))
        .chain(super::archive::settings(cluster))
        .map(owned)
        .collect();
    all.extend(
        default_settings(cluster)
            .into_iter()
            .filter(|(k, _)| !user.contains_key(*k))
            .map(owned),
    );
    all.extend(user.iter().map(|(k, v)| (k.clone(), v.clone())));
    all
}

pub fn postgresql_conf(cluster: &Cluster) -> String {
    let mut out = String::from("# Written by geodb-operator from the GeoDatabase spec.\n");
    // Values that would break the quoting are refused (`api::unwritable_value`).
    for (key, value) in settings(cluster) {
        out.push_str(&format!("{key} = '{value}'\n"));
    }
    out
}

pub fn pg_hba_conf() -> String {
    format!(
        "# Written by geodb-operator. Every network login uses TLS and SCRAM; a\n\
         # connection without TLS matches no line and is refused.\n\
         local all all peer\n\
         hostssl replication {REPLICATION_USER} 0.0.0.0/0 scram-sha-256\n\
         hostssl replication {REPLICATION_USER} ::/0 scram-sha-256\n\
         hostssl all {REPLICATION_USER} 0.0.0.0/0 reject\n\
         hostssl all {REPLICATION_USER} ::/0 reject\n\
         hostssl all all 0.0.0.0/0 scram-sha-256\n\
         hostssl all all ::/0 scram-sha-256\n"
    )
}

pub fn config_map(cluster: &Cluster) -> ConfigMap {
    ConfigMap {
        metadata: cluster.component_meta(cluster.names.config_map(), COMPONENT_DATABASE),
        data: Some(BTreeMap::from([
            (POSTGRESQL_CONF.to_owned(), postgresql_conf(cluster)),
            (PG_HBA_CONF.to_owned(), pg_hba_conf()),
            (
                PG_IDENT_CONF.to_owned(),
                "# No user name maps.\n".to_owned(),
            ),
            (
                BOOTSTRAPPED_KEY.to_owned(),
                cluster.bootstrapped.to_string(),
            ),
        ])),
        ..ConfigMap::default()
    }
}

/// Hash of the configuration files, for the pod template annotation.
/// Hash of the settings that need a restart, for the pod template annotation: a change
/// of one of them rolls the pods; any other change of the configuration is reloaded in
/// place (see `restart`).
pub fn config_hash(cluster: &Cluster) -> String {
    let restart: Vec<String> = settings(cluster)
        .into_iter()
        .filter(|(k, _)| needs_restart(k))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    content_hash(&[restart.join("\n").as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::is_reserved;
    use crate::builders::fixtures::cluster;
    use serde_json::json;

    #[test]
    fn user_parameters_override_defaults_not_managed_settings() {
        let c = cluster(json!({"storage": {"size": "1Gi"},
            "postgresql": {"parameters": {"work_mem": "64MB", "max_connections": "300"}}}));
        let conf = postgresql_conf(&c);
        assert!(conf.contains("work_mem = '64MB'"));
        assert!(conf.contains("max_connections = '300'"));
        assert!(!conf.contains("max_connections = '100'"));
        assert!(conf.contains("password_encryption = 'scram-sha-256'"));
        assert_eq!(
            effective_setting(&c, "max_connections").as_deref(),
            Some("300")
        );
    }

    #[test]
    fn only_restart_settings_change_the_hash() {
        let a = cluster(json!({"storage": {"size": "1Gi"}}));
        let reload = cluster(json!({"storage": {"size": "1Gi"},
            "postgresql": {"parameters": {"work_mem": "8MB"}}}));
        let restart = cluster(json!({"storage": {"size": "1Gi"},
            "postgresql": {"parameters": {"shared_buffers": "64MB"}}}));
        assert_eq!(config_hash(&a), config_hash(&reload));
        assert_ne!(config_hash(&a), config_hash(&restart));
        assert_ne!(postgresql_conf(&a), postgresql_conf(&reload));
        // Synchronous mode is a reload too.
        let sync =
            cluster(json!({"storage": {"size": "1Gi"}, "replication": {"synchronous": true}}));
        assert_eq!(config_hash(&a), config_hash(&sync));
    }

    #[test]
    fn synchronous_mode_needs_any_one_replica() {
        let a = cluster(json!({"storage": {"size": "1Gi"}, "instances": 3}));
        assert!(!postgresql_conf(&a).contains("synchronous_standby_names"));
        let b = cluster(json!({"storage": {"size": "1Gi"}, "instances": 3,
            "replication": {"synchronous": true}}));
        assert!(postgresql_conf(&b).contains("synchronous_standby_names = 'ANY 1 (*)'"));
        assert!(postgresql_conf(&b).contains("wal_log_hints = 'on'"));
    }

    #[test]
    fn slots_keep_a_bounded_share_of_the_volume() {
        assert_eq!(wal_retention("1Gi"), ("204MB".into(), "51MB".into()));
        assert_eq!(wal_retention("100Gi"), ("20480MB".into(), "512MB".into()));
        assert_eq!(wal_retention("128Mi"), ("64MB".into(), "16MB".into()));
        let c = cluster(json!({"storage": {"size": "10Gi"},
            "postgresql": {"parameters": {"max_slot_wal_keep_size": "-1"}}}));
        let conf = postgresql_conf(&c);
        assert!(conf.contains("max_slot_wal_keep_size = '-1'"));
        assert!(!conf.contains("max_slot_wal_keep_size = '2048MB'"));
    }

    /// The file lists the operator's settings, then its overridable defaults: a setting of
    /// the first kind that a user may set too would be silently replaced by the user's
    /// value (written later), so each one must be reserved, and no default may be.
    #[test]
    fn every_setting_the_operator_writes_is_reserved() {
        let store = json!({"endpoint": "https://s3.local", "bucket": "b", "path": "a/b",
            "credentials": {"secretName": "s3"}});
        let specs = [
            json!({"storage": {"size": "1Gi"}}),
            json!({"storage": {"size": "1Gi"}, "instances": 3,
                "replication": {"synchronous": true}}),
            json!({"storage": {"size": "1Gi"}, "backup": {"objectStore": store.clone()}}),
            json!({"storage": {"size": "1Gi"}, "bootstrap": {"recovery": {"source": store,
                "target": {"time": "2026-12-01T10:00:00Z"}}}}),
        ];
        let defaults: Vec<&str> = default_settings(&cluster(specs[0].clone()))
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        for name in &defaults {
            assert!(
                !is_reserved(name),
                "the default {name} cannot be overridden"
            );
        }
        for spec in specs {
            let conf = postgresql_conf(&cluster(spec));
            let names = conf
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split_once(" = "));
            for (name, _) in names {
                assert!(
                    defaults.contains(&name) || is_reserved(name),
                    "the operator writes {name}, which spec.postgresql.parameters may set: reserve it in api/postgresql.rs"
                );
            }
        }
    }

    #[test]
    fn hba_uses_scram_only() {
        let hba = pg_hba_conf();
        assert!(!hba.contains("trust"));
        assert!(!hba.contains(" md5"));
    }

    #[test]
    fn network_logins_need_tls() {
        let hba = pg_hba_conf();
        let rules: Vec<&str> = hba.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(rules
            .iter()
            .all(|l| l.starts_with("local ") || l.starts_with("hostssl ")));
        let conf = postgresql_conf(&cluster(json!({"storage": {"size": "1Gi"}})));
        assert!(conf.contains("ssl = 'on'"));
        assert!(conf.contains("ssl_key_file = '/etc/geodb/secrets/tls/tls.key'"));
    }
}
