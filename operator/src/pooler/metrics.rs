//! `/metrics` of a pooler pod: PgBouncer's `SHOW POOLS`, `SHOW STATS` and `SHOW LISTS`
//! in the Prometheus text format, base units (seconds, bytes), counters ending in
//! `_total`.

pub use crate::runtime::exposition::Row;
use crate::runtime::exposition::{escape, number, Family};

/// What the console answered; `None` when it did not (`pgbouncer_up 0`).
pub struct Scrape {
    pub pools: Vec<Row>,
    pub stats: Vec<Row>,
    pub lists: Vec<Row>,
}

fn pool_labels(row: &Row) -> String {
    format!(
        "database=\"{}\",user=\"{}\"",
        escape(row.get("database").map_or("", String::as_str)),
        escape(row.get("user").map_or("", String::as_str))
    )
}

fn database_label(row: &Row) -> String {
    format!(
        "database=\"{}\"",
        escape(row.get("database").map_or("", String::as_str))
    )
}

/// Per pool and state: `(label, column)` pairs of `SHOW POOLS`.
const CLIENT_STATES: [(&str, &str); 2] = [("active", "cl_active"), ("waiting", "cl_waiting")];
const SERVER_STATES: [(&str, &str); 5] = [
    ("active", "sv_active"),
    ("idle", "sv_idle"),
    ("used", "sv_used"),
    ("tested", "sv_tested"),
    ("login", "sv_login"),
];

fn by_state(rows: &[Row], states: &[(&str, &str)]) -> Vec<(String, f64)> {
    rows.iter()
        .flat_map(|row| {
            states.iter().filter_map(move |(state, column)| {
                Some((
                    format!("{},state=\"{state}\"", pool_labels(row)),
                    number(row, column)?,
                ))
            })
        })
        .collect()
}

/// `column` of each `SHOW STATS` row, scaled (microseconds to seconds: 1e-6).
fn per_database(rows: &[Row], column: &str, scale: f64) -> Vec<(String, f64)> {
    rows.iter()
        .filter_map(|row| Some((database_label(row), number(row, column)? * scale)))
        .collect()
}

/// Counters of `SHOW STATS`, per database: name, help, column, scale to base units.
const STATS: [(&str, &str, &str, f64); 7] = [
    (
        "pgbouncer_transactions_total",
        "Transactions pooled, per database.",
        "total_xact_count",
        1.0,
    ),
    (
        "pgbouncer_queries_total",
        "Queries pooled, per database.",
        "total_query_count",
        1.0,
    ),
    (
        "pgbouncer_received_bytes_total",
        "Bytes received from clients, per database.",
        "total_received",
        1.0,
    ),
    (
        "pgbouncer_sent_bytes_total",
        "Bytes sent to clients, per database.",
        "total_sent",
        1.0,
    ),
    (
        "pgbouncer_transaction_seconds_total",
        "Time spent in transactions, per database.",
        "total_xact_time",
        1e-6,
    ),
    (
        "pgbouncer_query_seconds_total",
        "Time spent in queries, per database.",
        "total_query_time",
        1e-6,
    ),
    (
        "pgbouncer_client_wait_seconds_total",
        "Time clients waited for a server connection, per database.",
        "total_wait_time",
        1e-6,
    ),
];

fn pool_families(pools: &[Row]) -> [Family<'static>; 3] {
    let max_wait = pools
        .iter()
        .filter_map(|row| {
            let seconds = number(row, "maxwait")? + number(row, "maxwait_us").unwrap_or(0.0) / 1e6;
            Some((pool_labels(row), seconds))
        })
        .collect();
    [
        Family {
            name: "pgbouncer_pool_client_connections",
            kind: "gauge",
            help: "Client connections of a pool by state.",
            samples: by_state(pools, &CLIENT_STATES),
        },
        Family {
            name: "pgbouncer_pool_server_connections",
            kind: "gauge",
            help: "Server connections of a pool by state.",
            samples: by_state(pools, &SERVER_STATES),
        },
        Family {
            name: "pgbouncer_pool_max_wait_seconds",
            kind: "gauge",
            help: "How long the oldest waiting client of a pool has waited.",
            samples: max_wait,
        },
    ]
}

fn list_family(lists: &[Row]) -> Family<'static> {
    let samples = lists
        .iter()
        .filter_map(|row| {
            Some((
                format!("list=\"{}\"", escape(row.get("list")?)),
                number(row, "items")?,
            ))
        })
        .collect();
    Family {
        name: "pgbouncer_list_items",
        kind: "gauge",
        help: "Items of PgBouncer's internal lists (SHOW LISTS).",
        samples,
    }
}

/// The exposition of one scrape (pure).
pub fn render(scrape: Option<&Scrape>) -> String {
    let mut out = String::new();
    Family {
        name: "pgbouncer_up",
        kind: "gauge",
        help: "Whether PgBouncer answered on its console.",
        samples: vec![(String::new(), if scrape.is_some() { 1.0 } else { 0.0 })],
    }
    .write(&mut out);
    let Some(s) = scrape else {
        return out;
    };
    for family in pool_families(&s.pools) {
        family.write(&mut out);
    }
    for (name, help, column, scale) in STATS {
        Family {
            name,
            kind: "counter",
            help,
            samples: per_database(&s.stats, column, scale),
        }
        .write(&mut out);
    }
    list_family(&s.lists).write(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::runtime::exposition::row;

    #[test]
    fn pools_stats_and_lists_in_base_units() {
        let scrape = Scrape {
            pools: vec![row(&[
                ("database", "app"),
                ("user", "app"),
                ("cl_active", "20"),
                ("cl_waiting", "3"),
                ("sv_active", "5"),
                ("sv_idle", "1"),
                ("sv_used", "0"),
                ("sv_tested", "0"),
                ("sv_login", "0"),
                ("maxwait", "1"),
                ("maxwait_us", "500000"),
            ])],
            stats: vec![row(&[
                ("database", "app"),
                ("total_xact_count", "42"),
                ("total_xact_time", "2500000"),
            ])],
            lists: vec![row(&[("list", "free_clients"), ("items", "7")])],
        };
        let text = render(Some(&scrape));
        assert!(text.contains("pgbouncer_up 1\n"));
        assert!(text.contains(
            "pgbouncer_pool_client_connections{database=\"app\",user=\"app\",state=\"waiting\"} 3\n"
        ));
        assert!(text.contains(
            "pgbouncer_pool_server_connections{database=\"app\",user=\"app\",state=\"active\"} 5\n"
        ));
        assert!(
            text.contains("pgbouncer_pool_max_wait_seconds{database=\"app\",user=\"app\"} 1.5\n")
        );
        assert!(text.contains("# TYPE pgbouncer_transactions_total counter\n"));
        assert!(text.contains("pgbouncer_transactions_total{database=\"app\"} 42\n"));
        assert!(text.contains("pgbouncer_transaction_seconds_total{database=\"app\"} 2.5\n"));
        assert!(text.contains("pgbouncer_list_items{list=\"free_clients\"} 7\n"));
        // A column PgBouncer did not send makes no sample, not a zero.
        assert!(!text.contains("pgbouncer_queries_total"));
    }

    #[test]
    fn down_when_the_console_does_not_answer() {
        assert_eq!(
            render(None),
            "# HELP pgbouncer_up Whether PgBouncer answered on its console.\n# TYPE pgbouncer_up gauge\npgbouncer_up 0\n"
        );
    }
}
