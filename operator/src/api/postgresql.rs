//! PostgreSQL configuration: `spec.postgresql`.

use std::collections::BTreeMap;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// PostgreSQL settings the operator owns; users may not set them in
/// `spec.postgresql.parameters` (the schema refuses them).
pub const RESERVED_PARAMETERS: &[&str] = &[
    "listen_addresses",
    "port",
    "data_directory",
    "config_file",
    "hba_file",
    "ident_file",
    "external_pid_file",
    "unix_socket_directories",
    "unix_socket_group",
    "unix_socket_permissions",
    "wal_level",
    "hot_standby",
    "archive_mode",
    "archive_command",
    "archive_library",
    "restore_command",
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_timeline",
    "primary_conninfo",
    "primary_slot_name",
    "promote_trigger_file",
    "synchronous_standby_names",
    "password_encryption",
    "ssl",
    "ssl_cert_file",
    "ssl_key_file",
    "ssl_ca_file",
    "logging_collector",
    "log_destination",
];

/// CEL rule refusing the reserved parameters; kept in sync with [`RESERVED_PARAMETERS`] by a test.
const RESERVED_PARAMETERS_RULE: &str = "self.all(k, !(k in ['listen_addresses', 'port', 'data_directory', 'config_file', 'hba_file', 'ident_file', 'external_pid_file', 'unix_socket_directories', 'unix_socket_group', 'unix_socket_permissions', 'wal_level', 'hot_standby', 'archive_mode', 'archive_command', 'archive_library', 'restore_command', 'recovery_target', 'recovery_target_lsn', 'recovery_target_name', 'recovery_target_time', 'recovery_target_xid', 'recovery_target_timeline', 'primary_conninfo', 'primary_slot_name', 'promote_trigger_file', 'synchronous_standby_names', 'password_encryption', 'ssl', 'ssl_cert_file', 'ssl_key_file', 'ssl_ca_file', 'logging_collector', 'log_destination']))";

/// PostgreSQL configuration.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostgresqlSpec {
    /// Settings written to `postgresql.conf`, e.g. `work_mem: 64MB`. Settings the operator
    /// manages (listening, replication, archiving, TLS files) are refused.
    #[serde(default)]
    #[schemars(schema_with = "parameters_schema")]
    #[x_kube(validation = Rule::new(RESERVED_PARAMETERS_RULE).message("postgresql.parameters must not set settings the operator manages (listen_addresses, port, data_directory, hba_file, wal_level, hot_standby, archive_*, restore_command, recovery_target*, primary_conninfo, primary_slot_name, synchronous_standby_names, password_encryption, ssl*, logging_collector, log_destination, ...)"))]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[a-z][a-z0-9_.]*$'))").message("postgresql.parameters keys must be lowercase setting names such as work_mem"))]
    pub parameters: BTreeMap<String, String>,
}

/// Parameter values are checked by pattern rather than CEL: a CEL rule over every value
/// of a map is too costly for the API server's CEL budget.
fn parameters_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 200,
        "additionalProperties": {
            "type": "string",
            "maxLength": 1024,
            "pattern": "^[^'\\n\\r]*$"
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_rule_lists_every_reserved_parameter() {
        for name in RESERVED_PARAMETERS {
            assert!(
                RESERVED_PARAMETERS_RULE.contains(&format!("'{name}'")),
                "{name} missing from the CEL rule"
            );
        }
        assert_eq!(
            RESERVED_PARAMETERS_RULE.matches('\'').count() / 2,
            RESERVED_PARAMETERS.len()
        );
    }
}
