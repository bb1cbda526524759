//! `spec.bootstrap`: where a new GeoDatabase's data comes from. Without it the first
//! instance runs initdb; with `recovery` it restores another cluster's backups.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::backup::ObjectStoreSpec;

/// How a new cluster gets its data; read once, when the first instance starts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapSpec {
    /// Point-in-time recovery from the base backups and WAL archive of another cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoverySpec>,
}

/// Restore the newest base backup before the target, then replay archived WAL up to it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.source.path)").message("bootstrap.recovery.source.path must name the archive to restore (the source cluster's backup path, <namespace>/<name> by default)"))]
pub struct RecoverySpec {
    /// The object store holding the source cluster's archive (`path` is required). It is
    /// only read.
    pub source: ObjectStoreSpec,

    /// Where replay stops; the end of the archive when unset.
    #[serde(default)]
    pub target: RecoveryTarget,
}

/// One recovery target at most.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.time) ? 1 : 0) + (has(self.lsn) ? 1 : 0) + (has(self.name) ? 1 : 0) + (has(self.latest) && self.latest ? 1 : 0) <= 1").message("bootstrap.recovery.target takes one of time, lsn, name or latest"))]
pub struct RecoveryTarget {
    /// Replay the transactions committed before this time (RFC 3339, e.g.
    /// `2026-12-01T10:30:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$')").message("bootstrap.recovery.target.time must be an RFC 3339 time, such as 2026-12-01T10:30:00Z"))]
    pub time: Option<String>,

    /// Replay up to this WAL position (`X/Y`, as `pg_current_wal_lsn()` shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$')").message("bootstrap.recovery.target.lsn must be a WAL position X/Y, such as 0/5000060"))]
    pub lsn: Option<String>,

    /// Replay up to a restore point made with `pg_create_restore_point(name)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub name: Option<String>,

    /// Replay everything archived (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<bool>,
}

/// The target as one string (`latest`, `time:<t>`, `lsn:<l>`, `name:<n>`): the value of
/// the agent's `GEODB_RECOVERY_TARGET`.
impl RecoveryTarget {
    pub fn encode(&self) -> String {
        match (&self.time, &self.lsn, &self.name) {
            (Some(time), _, _) => format!("time:{time}"),
            (_, Some(lsn), _) => format!("lsn:{lsn}"),
            (_, _, Some(name)) => format!("name:{name}"),
            _ => "latest".to_owned(),
        }
    }

    /// The target [`encode`](Self::encode) wrote; `None` for anything else.
    pub fn decode(value: &str) -> Option<Self> {
        let mut target = Self::default();
        match value.split_once(':') {
            None if value == "latest" => target.latest = Some(true),
            Some(("time", time)) => target.time = Some(time.to_owned()),
            Some(("lsn", lsn)) => target.lsn = Some(lsn.to_owned()),
            Some(("name", name)) => target.name = Some(name.to_owned()),
            _ => return None,
        }
        Some(target)
    }

    /// The backup catalog's view of the target: which base backup a restore starts from.
    pub fn catalog_target(&self) -> crate::backup::select::Target {
        use crate::backup::select::Target;
        match (&self.time, &self.lsn, &self.name) {
            (Some(time), _, _) => Target::Time(time.clone()),
            (_, Some(lsn), _) => Target::Lsn(lsn.clone()),
            (_, _, Some(name)) => Target::Name(name.clone()),
            _ => Target::Latest,
        }
    }

    /// PostgreSQL's recovery settings for the target (none for the end of the archive).
    pub fn postgres_settings(&self) -> Vec<(&'static str, String)> {
        match (&self.time, &self.lsn, &self.name) {
            (Some(time), _, _) => vec![("recovery_target_time", postgres_time(time))],
            (_, Some(lsn), _) => vec![("recovery_target_lsn", lsn.clone())],
            (_, _, Some(name)) => vec![("recovery_target_name", name.clone())],
            _ => Vec::new(),
        }
    }
}

/// RFC 3339 as PostgreSQL reads it at server start: a space for the `T`, and `+00:00`
/// for `Z` (time zone abbreviations are not loaded yet when the command line is read).
fn postgres_time(time: &str) -> String {
    let spaced = time.replacen('T', " ", 1);
    match spaced
        .strip_suffix('Z')
        .or_else(|| spaced.strip_suffix('z'))
    {
        Some(rest) => format!("{rest}+00:00"),
        None => spaced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_encode_for_the_agent() {
        let t = |v: serde_json::Value| serde_json::from_value::<RecoveryTarget>(v).unwrap();
        assert_eq!(t(serde_json::json!({})).encode(), "latest");
        assert_eq!(t(serde_json::json!({"latest": true})).encode(), "latest");
        assert_eq!(
            t(serde_json::json!({"time": "2026-12-01T10:30:00Z"})).encode(),
            "time:2026-12-01T10:30:00Z"
        );
        assert_eq!(
            t(serde_json::json!({"lsn": "0/5000060"})).encode(),
            "lsn:0/5000060"
        );
        assert_eq!(
            t(serde_json::json!({"name": "before-migration"})).encode(),
            "name:before-migration"
        );
        for v in [
            serde_json::json!({"time": "2026-12-01T10:30:00.5+01:00"}),
            serde_json::json!({"lsn": "0/5000060"}),
            serde_json::json!({"name": "a:b"}),
        ] {
            let target = t(v);
            assert_eq!(RecoveryTarget::decode(&target.encode()), Some(target));
        }
        assert_eq!(
            RecoveryTarget::decode("latest")
                .unwrap()
                .postgres_settings(),
            vec![]
        );
        assert_eq!(RecoveryTarget::decode("soon"), None);
        assert_eq!(
            t(serde_json::json!({"time": "2026-12-02T03:23:57.189177Z"})).postgres_settings(),
            vec![(
                "recovery_target_time",
                "2026-12-02 03:23:57.189177+00:00".to_owned()
            )]
        );
        assert_eq!(
            postgres_time("2026-12-02T03:23:57+01:00"),
            "2026-12-02 03:23:57+01:00"
        );
        assert_eq!(
            t(serde_json::json!({"lsn": "0/5000060"})).postgres_settings(),
            vec![("recovery_target_lsn", "0/5000060".to_owned())]
        );
    }
}
