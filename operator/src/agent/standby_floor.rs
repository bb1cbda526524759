//! A standby must run some settings at least as high as its primary does, or PostgreSQL
//! aborts its recovery ("insufficient parameter settings"). When those settings are
//! lowered, the replicas roll before the primary and would start below the primary's
//! values; so a standby starts with the higher of its configured value and the value its
//! control file recorded from the primary's WAL. It takes the lower one at its next
//! restart after the primary runs it.

use std::path::Path;
use std::process::Command;

use super::bootstrap::conf_arg;
use super::settings::Settings;

/// The settings a standby needs at least as high as the primary's, each with its line
/// in `pg_controldata`'s output.
const FLOOR_SETTINGS: &[(&str, &str)] = &[
    ("max_connections", "max_connections setting:"),
    ("max_worker_processes", "max_worker_processes setting:"),
    ("max_wal_senders", "max_wal_senders setting:"),
    ("max_prepared_transactions", "max_prepared_xacts setting:"),
    ("max_locks_per_transaction", "max_locks_per_xact setting:"),
];

/// The values `pg_controldata` reports for the floor settings.
pub fn parse_controldata(text: &str) -> Vec<(&'static str, u64)> {
    FLOOR_SETTINGS
        .iter()
        .filter_map(|(name, label)| {
            let line = text.lines().find(|l| l.trim_start().starts_with(label))?;
            let value = line.trim_start()[label.len()..].trim().parse().ok()?;
            Some((*name, value))
        })
        .collect()
}

/// `-c name=value` overrides where the primary's recorded value is above the configured
/// one (pure).
pub fn overrides(
    recorded: &[(&'static str, u64)],
    configured: impl Fn(&str) -> Option<u64>,
) -> Vec<String> {
    recorded
        .iter()
        .filter(|(name, value)| configured(name).is_some_and(|c| c < *value))
        .map(|(name, value)| format!("{name}={value}"))
        .collect()
}

fn output(bin: &Path, program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(bin.join(program)).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The overrides a standby starts with. Best effort: when a value cannot be read the
/// standby starts with its configuration, and PostgreSQL says what is wrong if anything.
pub fn standby_overrides(settings: &Settings, bin: &Path) -> Vec<String> {
    if !settings.is_standby() {
        return Vec::new();
    }
    let pgdata = settings.pgdata.to_string_lossy().into_owned();
    let Some(controldata) = output(bin, "pg_controldata", &["-D", &pgdata]) else {
        return Vec::new();
    };
    let conf = conf_arg(settings);
    overrides(&parse_controldata(&controldata), |name| {
        output(bin, "postgres", &["-D", &pgdata, "-c", &conf, "-C", name])?
            .trim()
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTROLDATA: &str = "pg_control version number:            1300
Database cluster state:               in archive recovery
wal_level setting:                    replica
max_connections setting:              200
max_worker_processes setting:         8
max_wal_senders setting:              10
max_prepared_xacts setting:           0
max_locks_per_xact setting:           64
";

    #[test]
    fn reads_the_recorded_values() {
        assert_eq!(
            parse_controldata(CONTROLDATA),
            vec![
                ("max_connections", 200),
                ("max_worker_processes", 8),
                ("max_wal_senders", 10),
                ("max_prepared_transactions", 0),
                ("max_locks_per_transaction", 64),
            ]
        );
    }

    #[test]
    fn raises_only_what_is_configured_below_the_primary() {
        let recorded = parse_controldata(CONTROLDATA);
        let configured = |name: &str| match name {
            "max_connections" => Some(100),
            "max_wal_senders" => Some(20),
            "max_locks_per_transaction" => None,
            _ => Some(8),
        };
        assert_eq!(
            overrides(&recorded, configured),
            vec!["max_connections=200".to_owned()]
        );
    }
}
