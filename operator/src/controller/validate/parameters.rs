//! `spec.postgresql.parameters`: what the schema refuses, checked again (an object stored
//! before a rule existed is not checked by the API server until it changes), and the
//! values only the operator can read: integers and sizes.

use std::collections::BTreeMap;

use crate::api::{is_reserved, unknown_preload_libraries, unwritable_value, PRELOAD_LIBRARIES};
use crate::quantity::parse_pg_memory;

/// Integer settings checked before they reach `postgresql.conf`.
const INTEGER_PARAMETERS: &[&str] = &[
    "max_connections",
    "max_wal_senders",
    "max_replication_slots",
    "max_worker_processes",
    "max_parallel_workers",
    "max_parallel_workers_per_gather",
    "superuser_reserved_connections",
];

/// Memory settings and the unit of a bare number, in bytes.
const MEMORY_PARAMETERS: &[(&str, u64)] = &[
    ("shared_buffers", 8192),
    ("effective_cache_size", 8192),
    ("work_mem", 1024),
    ("maintenance_work_mem", 1024),
    ("temp_buffers", 8192),
    ("wal_buffers", 8192),
];

/// Whether `name` looks like a setting name (as the schema's key rule says).
fn setting_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
}

/// The problems of one parameter's name and value.
fn problem(name: &str, value: &str) -> Option<String> {
    let field = format!("postgresql.parameters.{name}");
    if !setting_name(name) {
        return Some(format!(
            "{field}: not a setting name (lowercase letters, digits, '_' and '.')"
        ));
    }
    if is_reserved(name) {
        return Some(format!(
            "{field} may not be set: the operator writes it, or it runs commands, reads files, loads libraries or weakens durability"
        ));
    }
    if let Some(what) = unwritable_value(value) {
        return Some(format!("{field}: the value may not contain {what}"));
    }
    if name == "shared_preload_libraries" {
        let unknown = unknown_preload_libraries(value);
        if !unknown.is_empty() {
            return Some(format!(
                "{field} lists {}; only {} may be preloaded",
                unknown.join(", "),
                PRELOAD_LIBRARIES.join(", ")
            ));
        }
    }
    if INTEGER_PARAMETERS.contains(&name)
        && value.trim().parse::<i64>().map(|v| v < 0).unwrap_or(true)
    {
        return Some(format!(
            "{field} is {value:?}; it must be a non-negative integer"
        ));
    }
    if let Some((_, unit)) = MEMORY_PARAMETERS.iter().find(|(n, _)| *n == name) {
        if parse_pg_memory(value, *unit).is_none() {
            return Some(format!(
                "{field} is {value:?}; use a size such as 64MB (units: B, kB, MB, GB, TB)"
            ));
        }
    }
    None
}

/// Every problem of `parameters`, one sentence each.
pub fn problems(parameters: &BTreeMap<String, String>) -> Vec<String> {
    parameters
        .iter()
        .filter_map(|(name, value)| problem(name, value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(pairs: &[(&str, &str)]) -> Vec<String> {
        problems(
            &pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn tuning_passes() {
        assert!(of(&[
            ("work_mem", "64MB"),
            (
                "shared_preload_libraries",
                "pg_stat_statements, auto_explain"
            ),
            ("search_path", "\"$user\", public"),
            ("auto_explain.log_min_duration", "1s"),
        ])
        .is_empty());
    }

    #[test]
    fn reserved_names_bad_values_and_libraries_are_named() {
        let problems = of(&[
            ("archive_cleanup_command", "rm -rf /"),
            ("include_dir", "/tmp"),
            ("fsync", "off"),
            ("log_line_prefix", "%m \\"),
            (
                "shared_preload_libraries",
                "pg_stat_statements,/tmp/evil.so",
            ),
            ("Work_Mem", "1MB"),
            ("max_connections", "many"),
            ("work_mem", "64mb"),
        ]);
        assert_eq!(problems.len(), 8, "{problems:#?}");
        for (problem, name) in problems.iter().zip([
            "Work_Mem",
            "archive_cleanup_command",
            "fsync",
            "include_dir",
            "log_line_prefix",
            "max_connections",
            "shared_preload_libraries",
            "work_mem",
        ]) {
            assert!(
                problem.starts_with(&format!("postgresql.parameters.{name}")),
                "{problem}"
            );
        }
        assert!(problems[4].contains("a final backslash"));
        assert!(problems[6].contains("lists /tmp/evil.so;"));
    }
}
