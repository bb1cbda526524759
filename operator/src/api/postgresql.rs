//! PostgreSQL configuration: `spec.postgresql`.
//!
//! `parameters` takes tuning settings only. Refused by the schema (and again by the
//! validate step, for objects stored before a rule existed): every setting the operator
//! writes, and every one that runs a command, reads a file or loads a library, or weakens
//! durability or hides corruption. `shared_preload_libraries` may list only
//! [`PRELOAD_LIBRARIES`].

use std::collections::BTreeMap;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Settings refused by name.
pub const RESERVED_PARAMETERS: &[&str] = &[
    // Written by the operator or its agent.
    "listen_addresses",
    "port",
    "password_encryption",
    "wal_level",
    "hot_standby",
    "wal_log_hints",
    "synchronous_standby_names",
    "logging_collector",
    "log_destination",
    // Name files or load code.
    "log_filename",
    "krb_server_keyfile",
    "dynamic_library_path",
    "local_preload_libraries",
    "session_preload_libraries",
    "jit_provider",
    "event_source",
    // Weaken durability, or let damage through.
    "fsync",
    "full_page_writes",
    "data_sync_retry",
    "restart_after_crash",
    "zero_damaged_pages",
    "allow_system_table_mods",
    "allow_in_place_tablespaces",
];

/// Settings refused by the start of their name: whole families the operator owns
/// (`archive_*` is `spec.backup`'s, `recovery_target*` and `primary_*` the agent's, the
/// sockets), TLS and its files, configuration files read from elsewhere (`include*`), and
/// `ignore_*` (damaged pages, checksums and indexes passed over).
pub const RESERVED_PREFIXES: &[&str] = &[
    "archive_",
    "recovery_target",
    "primary_",
    "unix_socket_",
    "ssl",
    "include",
    "ignore_",
];

/// Settings refused by the end of their name: shell commands (`archive_cleanup_command`,
/// `recovery_end_command`, `ssl_passphrase_command`, ...), files (`config_file`,
/// `hba_file`, `external_pid_file`, ...) and directories (`data_directory`,
/// `log_directory`, ...).
pub const RESERVED_SUFFIXES: &[&str] = &["_command", "_file", "_directory"];

/// Libraries `shared_preload_libraries` may list: contrib modules of the image's
/// PostgreSQL (Debian's `postgresql-15`/`postgresql-17`) that are meant to be preloaded
/// and change no behaviour the operator relies on. PostGIS loads on first use and needs
/// no preloading; `passwordcheck` is left out, it could refuse the passwords the operator
/// sets.
pub const PRELOAD_LIBRARIES: &[&str] = &[
    "pg_stat_statements",
    "auto_explain",
    "pg_prewarm",
    "auth_delay",
];

const PRELOAD: &str = "shared_preload_libraries";

/// Whether `name` may not be set in `spec.postgresql.parameters`.
pub fn is_reserved(name: &str) -> bool {
    RESERVED_PARAMETERS.contains(&name)
        || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
        || RESERVED_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// The libraries of a `shared_preload_libraries` value that are not in
/// [`PRELOAD_LIBRARIES`] (an empty value preloads nothing).
pub fn unknown_preload_libraries(value: &str) -> Vec<&str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|library| !library.is_empty() && !PRELOAD_LIBRARIES.contains(library))
        .collect()
}

/// Why a parameter value cannot be written into `postgresql.conf` as `key = 'value'`:
/// a quote or a line break would end it, a NUL cut it, and a final backslash escape its
/// closing quote. `None` when it can.
pub fn unwritable_value(value: &str) -> Option<&'static str> {
    if value.contains(['\'', '\n', '\r', '\0']) {
        Some("quotes, line breaks and NUL characters")
    } else if value.ends_with('\\') {
        Some("a final backslash")
    } else {
        None
    }
}

/// `list` as a CEL list of string literals (the names contain no quotes).
fn cel_list(list: &[&str]) -> String {
    let quoted: Vec<String> = list.iter().map(|s| format!("'{s}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// [`is_reserved`] in CEL, for the map key `k`: a membership and a few prefix and suffix
/// checks per key, cheap enough for the API server's cost budget.
fn reserved_cel() -> String {
    let mut checks = vec![format!("k in {}", cel_list(RESERVED_PARAMETERS))];
    checks.extend(
        RESERVED_PREFIXES
            .iter()
            .map(|p| format!("k.startsWith('{p}')")),
    );
    checks.extend(
        RESERVED_SUFFIXES
            .iter()
            .map(|s| format!("k.endsWith('{s}')")),
    );
    checks.join(" || ")
}

/// A `shared_preload_libraries` value of listed libraries only, as a regular expression.
fn preload_pattern() -> String {
    let one = format!("({})", PRELOAD_LIBRARIES.join("|"));
    format!("^ *({one}( *, *{one})*)? *$")
}

/// The CEL rules (`x-kubernetes-validations`) of `parameters`.
fn parameter_rules() -> Vec<serde_json::Value> {
    let reserved = reserved_cel();
    vec![
        serde_json::json!({
            "rule": format!("self.all(k, !({reserved}))"),
            "message": "postgresql.parameters must not set a setting the operator writes or one that runs commands, reads files, loads libraries or weakens durability (see docs/api.md)",
            // One name, not all of them: a join of every key is beyond the cost budget.
            "messageExpression": format!("'postgresql.parameters must not set ' + self.filter(k, {reserved})[0] + ': the operator writes it, or it runs commands, reads files, loads libraries or weakens durability (see docs/api.md)'"),
        }),
        serde_json::json!({
            "rule": "self.all(k, k.matches('^[a-z][a-z0-9_.]*$'))",
            "message": "postgresql.parameters keys must be lowercase setting names such as work_mem",
        }),
        serde_json::json!({
            "rule": format!("!('{PRELOAD}' in self) || self['{PRELOAD}'].matches('{}')", preload_pattern()),
            "message": format!("postgresql.parameters.{PRELOAD} may list only {}", PRELOAD_LIBRARIES.join(", ")),
        }),
    ]
}

/// PostgreSQL configuration.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PostgresqlSpec {
    /// Settings written to `postgresql.conf`, e.g. `work_mem: 64MB`. Refused: settings the
    /// operator writes (listening, replication, archiving, recovery, TLS), settings that
    /// run commands, read files or load libraries, and settings that weaken durability;
    /// `shared_preload_libraries` may list only a few libraries. Both lists are in
    /// docs/api.md.
    #[serde(default)]
    #[schemars(schema_with = "parameters_schema")]
    pub parameters: BTreeMap<String, String>,
}

/// Parameter values are checked by pattern rather than CEL: a CEL rule over every value
/// of a map is too costly for the API server's CEL budget. The pattern is
/// [`unwritable_value`]'s: no quote, line break or NUL, no final backslash.
fn parameters_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 200,
        "additionalProperties": {
            "type": "string",
            "maxLength": 1024,
            "pattern": "^([^'\\n\\r\\x00]*[^'\\n\\r\\x00\\\\])?$"
        },
        "x-kubernetes-validations": parameter_rules()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_issue_found_running_is_reserved() {
        for name in [
            "archive_cleanup_command",
            "recovery_end_command",
            "ssl_passphrase_command",
            "include_dir",
            "include",
            "include_if_exists",
            "log_directory",
            "dynamic_library_path",
            "fsync",
            "full_page_writes",
            "wal_log_hints",
            "allow_system_table_mods",
            "config_file",
            "data_directory",
            "hba_file",
            "ssl_key_file",
            "ignore_checksum_failure",
            "recovery_target_action",
            "archive_timeout",
        ] {
            assert!(is_reserved(name), "{name} is not reserved");
        }
        for name in [
            "work_mem",
            "shared_buffers",
            "search_path",
            "synchronous_commit",
            "cluster_name",
            "wal_sync_method",
            "shared_preload_libraries",
            "hot_standby_feedback",
            "log_min_duration_statement",
            "pg_stat_statements.max",
            "auto_explain.log_min_duration",
        ] {
            assert!(!is_reserved(name), "{name} is reserved");
        }
    }

    #[test]
    fn the_cel_rule_says_what_is_reserved_says() {
        let rule = reserved_cel();
        for name in RESERVED_PARAMETERS {
            assert!(rule.contains(&format!("'{name}'")), "{name}");
        }
        for prefix in RESERVED_PREFIXES {
            assert!(
                rule.contains(&format!("k.startsWith('{prefix}')")),
                "{prefix}"
            );
        }
        for suffix in RESERVED_SUFFIXES {
            assert!(
                rule.contains(&format!("k.endsWith('{suffix}')")),
                "{suffix}"
            );
        }
        // Literals inside CEL single quotes.
        let all = RESERVED_PARAMETERS
            .iter()
            .chain(RESERVED_PREFIXES)
            .chain(RESERVED_SUFFIXES)
            .chain(PRELOAD_LIBRARIES);
        for word in all {
            assert!(word
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        }
    }

    #[test]
    fn preload_libraries_come_from_the_list() {
        assert!(unknown_preload_libraries("").is_empty());
        assert!(unknown_preload_libraries("pg_stat_statements, auto_explain").is_empty());
        assert_eq!(
            unknown_preload_libraries("pg_stat_statements,/tmp/evil,pgaudit"),
            ["/tmp/evil", "pgaudit"]
        );
        assert_eq!(
            preload_pattern(),
            "^ *((pg_stat_statements|auto_explain|pg_prewarm|auth_delay)( *, *(pg_stat_statements|auto_explain|pg_prewarm|auth_delay))*)? *$"
        );
    }

    #[test]
    fn values_that_would_break_the_file() {
        assert_eq!(unwritable_value("64MB"), None);
        assert_eq!(unwritable_value(""), None);
        assert_eq!(unwritable_value("a\\b"), None);
        assert!(unwritable_value("C:\\").is_some());
        assert!(unwritable_value("it's").is_some());
        assert!(unwritable_value("a\nb").is_some());
        assert!(unwritable_value("a\0b").is_some());
    }
}
