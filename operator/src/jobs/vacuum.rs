//! `geodb maintain vacuum`: `VACUUM (ANALYZE)` of the application database's tables (or
//! of the ones named), never queued behind application locks: each table's VACUUM waits
//! at most `lock_timeout` for its lock, and a table it cannot lock is skipped and said so
//! (autovacuum stays on and gets it later). Per table: the duration and the dead tuples
//! before and after. Connects like `geodb migrate` (see `jobs::connection`); the last
//! stdout line (and the termination message in a pod) is one JSON object, [`Report`].

use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, warn};

use super::connection::{ConnectionError, Target, CONNECT_WAIT};
use crate::postgres::sql::{ident, literal};

pub const APPLICATION_NAME: &str = "geodb-vacuum";

/// One table's run.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TableRun {
    pub table: String,
    /// `vacuumed`, or `skipped` when its lock was not granted in time.
    pub outcome: &'static str,
    pub seconds: f64,
    pub dead_before: i64,
    pub dead_after: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The command's outcome (read back as `status.maintenance.lastVacuum`).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// `vacuumed` (every table), `partial` (some skipped or failed) or `failed`.
    pub outcome: &'static str,
    pub seconds: f64,
    pub tables: Vec<TableRun>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Report {
    fn failed(error: String) -> Self {
        Self {
            outcome: "failed",
            seconds: 0.0,
            tables: Vec::new(),
            error: Some(error),
        }
    }
}

/// The overall outcome from the tables' (pure).
pub fn overall(tables: &[TableRun]) -> &'static str {
    if tables.iter().all(|t| t.outcome == "vacuumed") {
        "vacuumed"
    } else {
        "partial"
    }
}

/// `schema.table` quoted, from `table` or `schema.table` (pure).
pub fn qualified(name: &str) -> String {
    match name.split_once('.') {
        Some((schema, table)) => format!("{}.{}", ident(schema), ident(table)),
        None => ident(name),
    }
}

pub struct Args {
    /// Tables to vacuum; every user table when empty.
    pub tables: Vec<String>,
    pub lock_timeout: Duration,
    /// Per-table autovacuum settings: table, key, value.
    pub settings: Vec<(String, String, String)>,
}

/// `TABLE:KEY=VALUE` arguments, checked: a known autovacuum key and a number or a
/// boolean (pure).
pub fn parse_settings(args: &[String]) -> Result<Vec<(String, String, String)>, String> {
    args.iter()
        .map(|arg| {
            let (table, setting) = arg
                .split_once(':')
                .ok_or_else(|| format!("{arg}: expected TABLE:KEY=VALUE"))?;
            let (key, value) = setting
                .split_once('=')
                .ok_or_else(|| format!("{arg}: expected TABLE:KEY=VALUE"))?;
            if !crate::api::AUTOVACUUM_SETTINGS.contains(&key) {
                return Err(format!("{arg}: {key} is not an autovacuum setting"));
            }
            let number = !value.is_empty()
                && value.chars().all(|c| c.is_ascii_digit() || c == '.')
                && value.parse::<f64>().is_ok();
            if !number && value != "true" && value != "false" {
                return Err(format!("{arg}: {value} is not a number or true/false"));
            }
            Ok((table.to_owned(), key.to_owned(), value.to_owned()))
        })
        .collect()
}

pub fn command(args: &Args) -> Report {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return Report::failed(format!("starting the runtime: {e}")),
    };
    runtime.block_on(async {
        match run(args).await {
            Ok(report) => report,
            Err(error) => Report::failed(error),
        }
    })
}

fn connection_error(e: ConnectionError) -> String {
    e.to_string()
}

async fn dead_tuples(client: &tokio_postgres::Client, table: &str) -> Result<i64, String> {
    client
        .query_opt(
            "SELECT n_dead_tup FROM pg_catalog.pg_stat_all_tables WHERE relid = $1::text::regclass",
            &[&qualified(table)],
        )
        .await
        .map(|row| row.map(|r| r.get::<_, i64>(0)).unwrap_or(0))
        .map_err(|e| e.to_string())
}

async fn run(args: &Args) -> Result<Report, String> {
    let started = Instant::now();
    let target = Target::from_env().map_err(connection_error)?;
    let client = target
        .connect(APPLICATION_NAME, CONNECT_WAIT)
        .await
        .map_err(connection_error)?;
    let millis = args.lock_timeout.as_millis();
    client
        .batch_execute(&format!(
            "SET lock_timeout = {}; SET statement_timeout = 0",
            literal(&format!("{millis}ms"))
        ))
        .await
        .map_err(|e| e.to_string())?;
    let tables = match args.tables.is_empty() {
        false => args.tables.clone(),
        true => client
            .query(
                "SELECT schemaname || '.' || relname FROM pg_catalog.pg_stat_user_tables ORDER BY 1",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .map(|r| r.get(0))
            .collect(),
    };
    for (table, key, value) in &args.settings {
        // Checked by `parse_settings`: a known key, a number or a boolean.
        let sql = format!("ALTER TABLE {} SET ({key} = {value})", qualified(table));
        match client.batch_execute(&sql).await {
            Ok(()) => info!(table, key, value, "autovacuum setting"),
            Err(e) => warn!(table, key, error = %e, "setting autovacuum"),
        }
    }
    let mut runs = Vec::new();
    for table in tables {
        runs.push(vacuum_one(&client, &table).await);
    }
    Ok(Report {
        outcome: overall(&runs),
        seconds: started.elapsed().as_secs_f64(),
        tables: runs,
        error: None,
    })
}

async fn vacuum_one(client: &tokio_postgres::Client, table: &str) -> TableRun {
    let dead_before = dead_tuples(client, table).await.unwrap_or(-1);
    let started = Instant::now();
    let done = client
        .batch_execute(&format!("VACUUM (ANALYZE) {}", qualified(table)))
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let (outcome, error) = match done {
        Ok(()) => ("vacuumed", None),
        Err(e) => {
            let lock = e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE);
            let message = e
                .as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_else(|| e.to_string());
            (if lock { "skipped" } else { "failed" }, Some(message))
        }
    };
    let dead_after = dead_tuples(client, table).await.unwrap_or(-1);
    match &error {
        None => info!(table, seconds, dead_before, dead_after, "vacuumed"),
        Some(error) => warn!(table, outcome, %error, "not vacuumed"),
    }
    TableRun {
        table: table.to_owned(),
        outcome,
        seconds,
        dead_before,
        dead_after,
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_settings_with_plain_values_pass() {
        let ok = parse_settings(&["locations:autovacuum_vacuum_scale_factor=0.05".into()]).unwrap();
        assert_eq!(ok[0].0, "locations");
        assert!(parse_settings(&["t:fillfactor=50".into()]).is_err());
        assert!(parse_settings(&["t:autovacuum_enabled=yes; DROP".into()]).is_err());
        assert!(parse_settings(&["nocolon".into()]).is_err());
    }

    #[test]
    fn the_report_reads_back_as_the_status() {
        let report = Report {
            outcome: "partial",
            seconds: 1.5,
            tables: vec![TableRun {
                table: "locations".into(),
                outcome: "skipped",
                seconds: 2.0,
                dead_before: 10,
                dead_after: 10,
                error: Some("canceling statement due to lock timeout".into()),
            }],
            error: None,
        };
        let line = serde_json::to_string(&report).unwrap();
        let run: crate::api::VacuumRun = serde_json::from_str(&line).unwrap();
        assert_eq!(run.outcome, "partial");
        assert_eq!(run.tables[0].dead_before, 10);
        assert_eq!(run.tables[0].outcome, "skipped");
    }

    #[test]
    fn names_are_quoted_and_outcomes_summed() {
        assert_eq!(qualified("locations"), "\"locations\"");
        assert_eq!(qualified("public.locations"), "\"public\".\"locations\"");
        let run = |outcome| TableRun {
            table: "t".into(),
            outcome,
            seconds: 0.1,
            dead_before: 10,
            dead_after: 0,
            error: None,
        };
        assert_eq!(overall(&[run("vacuumed"), run("vacuumed")]), "vacuumed");
        assert_eq!(overall(&[run("vacuumed"), run("skipped")]), "partial");
    }
}
