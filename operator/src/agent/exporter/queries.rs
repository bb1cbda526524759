//! What one scrape asks PostgreSQL, and the answers as rows of text (rendered by
//! `render`). Each query is bounded by the session's `statement_timeout`; one that fails
//! leaves its families out of the scrape and counts as a scrape error, the others still
//! report.

use tokio_postgres::Client;
use tracing::debug;

use crate::runtime::exposition::{rows_of, Row};

/// The instance's role, limits and (on a replica) how far replay trails what was received.
pub const INSTANCE: &str = "SELECT pg_is_in_recovery()::int AS in_recovery, \
    current_setting('max_connections') AS max_connections, \
    (SELECT setting FROM pg_settings WHERE name = 'log_min_duration_statement') AS slow_ms, \
    CASE WHEN pg_is_in_recovery() \
         THEN GREATEST(0, pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())) \
    END AS lag_bytes, \
    CASE WHEN NOT pg_is_in_recovery() OR pg_last_wal_receive_lsn() IS NULL THEN NULL \
         WHEN pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0 \
         WHEN pg_last_xact_replay_timestamp() IS NULL THEN NULL \
         ELSE GREATEST(0, EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())) \
    END AS lag_seconds";

/// Replay trails what was received, but no transaction was replayed since the standby
/// started, so PostgreSQL has no timestamp to tell the lag by (and `GREATEST` would have
/// turned that NULL into 0): the lag is then at least the time since the exporter first
/// saw replay behind. `behind_since` carries that moment from scrape to scrape (pure but
/// for it).
pub fn fill_lag_seconds(
    row: &mut Row,
    behind_since: &mut Option<std::time::Instant>,
    now: std::time::Instant,
) {
    use crate::runtime::exposition::number;
    let behind = number(row, "lag_bytes").is_some_and(|bytes| bytes > 0.0);
    if !behind {
        *behind_since = None;
        return;
    }
    let since = *behind_since.get_or_insert(now);
    if number(row, "lag_seconds").is_none() {
        let seconds = now.saturating_duration_since(since).as_secs_f64();
        row.insert("lag_seconds".into(), format!("{seconds:.3}"));
    }
}

/// Client backends by state.
pub const CONNECTIONS: &str = "SELECT COALESCE(state, 'unknown') AS state, count(*) AS n \
    FROM pg_stat_activity WHERE backend_type = 'client backend' GROUP BY 1";

/// Size and activity counters of every database that takes connections.
pub const DATABASES: &str = "SELECT d.datname, pg_database_size(d.oid) AS size_bytes, \
    s.xact_commit, s.xact_rollback, s.deadlocks, s.temp_bytes \
    FROM pg_database d JOIN pg_stat_database s ON s.datid = d.oid WHERE d.datallowconn";

/// WAL archiving as the archiver saw it.
pub const ARCHIVER: &str = "SELECT archived_count, failed_count, \
    EXTRACT(EPOCH FROM clock_timestamp() - last_archived_time) AS last_success_age \
    FROM pg_stat_archiver";

/// On a primary: how far each connected standby's replay trails the primary's WAL. The
/// filter runs before the select list, so a standby never calls `pg_current_wal_lsn()`.
pub const STANDBYS: &str = "SELECT application_name AS standby, \
    GREATEST(0, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)) AS lag_bytes \
    FROM pg_stat_replication WHERE NOT pg_is_in_recovery() AND replay_lsn IS NOT NULL";

/// Statements whose mean execution time is above `log_min_duration_statement`: the ten
/// slowest, each with the count of all such statements (`slow`). Never the query text.
pub const SLOW: &str = "SELECT s.queryid::text AS queryid, COALESCE(d.datname, '') AS datname, \
    COALESCE(r.rolname, '') AS \"user\", s.calls, s.mean_exec_time / 1000 AS mean_seconds, \
    count(*) OVER () AS slow \
    FROM pg_stat_statements s \
    LEFT JOIN pg_database d ON d.oid = s.dbid \
    LEFT JOIN pg_roles r ON r.oid = s.userid \
    CROSS JOIN (SELECT setting::float8 AS ms FROM pg_settings \
                WHERE name = 'log_min_duration_statement') t \
    WHERE t.ms >= 0 AND s.mean_exec_time > t.ms AND s.queryid IS NOT NULL AND s.toplevel \
    ORDER BY s.mean_exec_time DESC LIMIT 10";

/// The answers of one scrape; `None` for a query that failed.
#[derive(Debug, Default)]
pub struct Answers {
    pub instance: Option<Row>,
    pub connections: Option<Vec<Row>>,
    pub databases: Option<Vec<Row>>,
    pub archiver: Option<Row>,
    pub standbys: Option<Vec<Row>>,
    pub slow: Option<Vec<Row>>,
    /// Queries that failed.
    pub errors: u64,
}

/// Run `sql` on `client`; a failure is logged at debug level (a scrape every few
/// seconds must not flood the log) and counted.
pub async fn ask(client: &Client, name: &str, sql: &str, errors: &mut u64) -> Option<Vec<Row>> {
    match client.simple_query(sql).await {
        Ok(messages) => Some(rows_of(&messages)),
        Err(error) => {
            debug!(query = name, %error, "a metrics query failed");
            *errors += 1;
            None
        }
    }
}

/// Every built-in query, in turn, on the one connection.
pub async fn scrape(client: &Client) -> Answers {
    let mut errors = 0;
    let first = |rows: Option<Vec<Row>>| rows.and_then(|r| r.into_iter().next());
    let instance = first(ask(client, "instance", INSTANCE, &mut errors).await);
    let connections = ask(client, "connections", CONNECTIONS, &mut errors).await;
    let databases = ask(client, "databases", DATABASES, &mut errors).await;
    let archiver = first(ask(client, "archiver", ARCHIVER, &mut errors).await);
    let standbys = ask(client, "standbys", STANDBYS, &mut errors).await;
    let slow = ask(client, "slow", SLOW, &mut errors).await;
    Answers {
        instance,
        connections,
        databases,
        archiver,
        standbys,
        slow,
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn row(lag_bytes: &str, lag_seconds: Option<&str>) -> Row {
        let mut row = Row::new();
        row.insert("lag_bytes".into(), lag_bytes.into());
        if let Some(s) = lag_seconds {
            row.insert("lag_seconds".into(), s.into());
        }
        row
    }

    #[test]
    fn a_standby_behind_without_a_replayed_transaction_counts_from_when_it_was_seen_behind() {
        let t0 = Instant::now();
        let mut since = None;
        // Behind, no timestamp: counted from the first scrape that saw it.
        let mut first = row("6600000", None);
        fill_lag_seconds(&mut first, &mut since, t0);
        assert_eq!(first.get("lag_seconds").map(String::as_str), Some("0.000"));
        let mut later = row("6600000", None);
        fill_lag_seconds(&mut later, &mut since, t0 + Duration::from_millis(2500));
        assert_eq!(later.get("lag_seconds").map(String::as_str), Some("2.500"));
        // PostgreSQL's own figure wins when it has one.
        let mut told = row("6600000", Some("7.25"));
        fill_lag_seconds(&mut told, &mut since, t0 + Duration::from_secs(3));
        assert_eq!(told.get("lag_seconds").map(String::as_str), Some("7.25"));
        // Caught up: the moment is forgotten, and a primary (no lag_bytes) gets nothing.
        let mut caught_up = row("0", Some("0"));
        fill_lag_seconds(&mut caught_up, &mut since, t0 + Duration::from_secs(4));
        assert!(since.is_none());
        let mut primary = Row::new();
        fill_lag_seconds(&mut primary, &mut since, t0);
        assert!(!primary.contains_key("lag_seconds"));
    }
}
