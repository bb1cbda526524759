//! What the pod's environment tells the agent (see `pod_contract`).

use std::path::PathBuf;

use super::error::{AgentError, Result};
use crate::pod_contract::{env, Credential, BOOTSTRAPPED_KEY, PASSWORD_FILE};

/// Everything the pod's environment tells the instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub cluster: String,
    pub namespace: String,
    pub slot: String,
    pub instance: String,
    pub bootstrap_instance: String,
    pub rw_host: String,
    pub database: String,
    pub owner: String,
    pub pgdata: PathBuf,
    pub config_dir: PathBuf,
    pub secrets_dir: PathBuf,
    pub socket_dir: PathBuf,
    /// The recovery target when the cluster is bootstrapped from another's backups.
    pub recovery_target: Option<String>,
}

impl Settings {
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Settings from any source of variables (the process environment, or in tests the
    /// environment of a rendered StatefulSet).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |name: &'static str| lookup(name).ok_or(AgentError::MissingEnv(name));
        Ok(Self {
            cluster: var(env::CLUSTER)?,
            namespace: var(env::POD_NAMESPACE)?,
            slot: var(env::SLOT)?,
            instance: var(env::INSTANCE)?,
            bootstrap_instance: var(env::BOOTSTRAP_INSTANCE)?,
            rw_host: var(env::RW_HOST)?,
            database: var(env::DATABASE)?,
            owner: var(env::DATABASE_OWNER)?,
            pgdata: PathBuf::from(var(env::PGDATA)?),
            config_dir: PathBuf::from(var(env::CONFIG_DIR)?),
            secrets_dir: PathBuf::from(var(env::SECRETS_DIR)?),
            socket_dir: PathBuf::from(var(env::PGHOST)?),
            recovery_target: lookup(env::RECOVERY_TARGET).filter(|v| !v.is_empty()),
        })
    }

    /// The mounted password of `role`.
    pub fn password(&self, role: Credential) -> Result<String> {
        let path = self.secrets_dir.join(role.dir()).join(PASSWORD_FILE);
        std::fs::read_to_string(&path)
            .map(|p| p.trim_end().to_owned())
            .map_err(AgentError::io(&path))
    }

    /// Passfile of the replication role, outside the data directory.
    pub fn replication_passfile(&self) -> PathBuf {
        self.pgdata.with_extension("pgpass")
    }

    /// The cluster's first primary has run (the ConfigMap says so).
    pub fn bootstrapped(&self) -> bool {
        std::fs::read_to_string(self.config_dir.join(BOOTSTRAPPED_KEY))
            .map(|v| v.trim() == "true")
            .unwrap_or(false)
    }

    /// A standby's data directory carries `standby.signal`.
    pub fn is_standby(&self) -> bool {
        self.pgdata.join("standby.signal").exists()
    }

    pub fn has_data(&self) -> bool {
        self.pgdata.join("PG_VERSION").exists()
    }
}

/// Settings of instance `geo-1` of `maps/geo`, for tests of what the agent runs.
#[cfg(test)]
pub(crate) fn fixture() -> Settings {
    Settings {
        cluster: "geo".into(),
        namespace: "maps".into(),
        slot: "s".into(),
        instance: "geo-1".into(),
        bootstrap_instance: "geo-1".into(),
        rw_host: "geo-rw".into(),
        database: "app".into(),
        owner: "app".into(),
        pgdata: "/d/pgdata".into(),
        config_dir: "/etc/geodb/config".into(),
        secrets_dir: "/s".into(),
        socket_dir: "/run/pg".into(),
        recovery_target: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::cluster;
    use crate::builders::instance::statefulset;
    use crate::pod_contract;

    /// The environment the StatefulSet gives the container, with the downward API's
    /// fields filled in as the kubelet would.
    fn rendered_env(instance: &str) -> std::collections::BTreeMap<String, String> {
        let c = cluster(
            serde_json::json!({"instances": 2, "storage": {"size": "1Gi"},
            "database": {"name": "maps", "owner": "mapper"}}),
        );
        let sts = statefulset(&c, instance);
        let container = &sts.spec.unwrap().template.spec.unwrap().containers[0];
        container
            .env
            .clone()
            .unwrap()
            .into_iter()
            .map(|var| {
                let value = match var.value_from.and_then(|f| f.field_ref) {
                    Some(field) if field.field_path == "metadata.namespace" => "maps".to_owned(),
                    Some(field) if field.field_path == "metadata.name" => format!("{instance}-0"),
                    Some(field) => panic!("unexpected field {}", field.field_path),
                    None => var.value.unwrap_or_default(),
                };
                (var.name, value)
            })
            .collect()
    }

    #[test]
    fn the_statefulset_environment_is_what_the_agent_reads() {
        let env = rendered_env("geo-2");
        let settings = Settings::from_lookup(|name| env.get(name).cloned()).unwrap();
        assert_eq!(
            settings,
            Settings {
                cluster: "geo".into(),
                namespace: "maps".into(),
                slot: "geodb_geo_2".into(),
                instance: "geo-2".into(),
                bootstrap_instance: "geo-1".into(),
                rw_host: "geo-rw".into(),
                database: "maps".into(),
                owner: "mapper".into(),
                pgdata: pod_contract::PGDATA.into(),
                config_dir: pod_contract::CONFIG_DIR.into(),
                secrets_dir: pod_contract::SECRETS_DIR.into(),
                socket_dir: pod_contract::SOCKET_DIR.into(),
                recovery_target: None,
            }
        );
    }

    #[test]
    fn a_missing_variable_is_named() {
        let env = rendered_env("geo-1");
        let missing = Settings::from_lookup(|name| {
            (name != env::SLOT)
                .then(|| env.get(name).cloned())
                .flatten()
        });
        assert!(matches!(missing, Err(AgentError::MissingEnv(env::SLOT))));
    }
}
