//! The exporter's answers in the Prometheus text format (pure): base units, counters
//! ending in `_total`, statements labelled by query id and never by their text.

use super::queries::Answers;
use super::volume::Usage;
use crate::runtime::exposition::{labels, number, Family, Row};

/// What one scrape found, beside the answers of PostgreSQL.
pub struct Scraped<'a> {
    /// `None` when PostgreSQL could not be reached (`geodb_pg_up 0`).
    pub answers: Option<&'a Answers>,
    pub volume: Option<Usage>,
    pub duration_seconds: f64,
    /// Queries that failed since the agent started.
    pub errors_total: u64,
}

fn per_row(rows: &[Row], label: &str, column: &str, scale: f64) -> Vec<(String, f64)> {
    rows.iter()
        .filter_map(|row| {
            let value = number(row, column)? * scale;
            Some((labels(&[(label, row.get(label)?.as_str())]), value))
        })
        .collect()
}

fn one(row: Option<&Row>, column: &str, scale: f64) -> Vec<(String, f64)> {
    row.and_then(|r| number(r, column))
        .map(|v| vec![(String::new(), v * scale)])
        .unwrap_or_default()
}

fn instance_families(row: Option<&Row>) -> Vec<Family<'static>> {
    let primary = row
        .and_then(|r| number(r, "in_recovery"))
        .map(|v| vec![(String::new(), 1.0 - v)])
        .unwrap_or_default();
    // log_min_duration_statement is in milliseconds; -1 (off) reports no threshold.
    let threshold = one(row, "slow_ms", 1e-3)
        .into_iter()
        .filter(|(_, v)| *v >= 0.0)
        .collect();
    vec![
        Family { name: "geodb_pg_is_primary", kind: "gauge", help: "1 on the primary, 0 on a replica.", samples: primary },
        Family { name: "geodb_pg_max_connections", kind: "gauge", help: "max_connections of the server.", samples: one(row, "max_connections", 1.0) },
        Family { name: "geodb_pg_slow_query_threshold_seconds", kind: "gauge", help: "log_min_duration_statement: statements slower than this are slow.", samples: threshold },
        Family { name: "geodb_pg_replication_lag_bytes", kind: "gauge", help: "On a replica, WAL received but not yet replayed.", samples: one(row, "lag_bytes", 1.0) },
        Family { name: "geodb_pg_replication_lag_seconds", kind: "gauge", help: "On a replica, how old the last replayed transaction is while replay trails what was received (before any was replayed: how long replay has been seen behind); 0 when caught up.", samples: one(row, "lag_seconds", 1.0) },
    ]
}

const DATABASE_COUNTERS: [(&str, &str, &str); 4] = [
    (
        "geodb_pg_xact_commits_total",
        "Transactions committed, per database.",
        "xact_commit",
    ),
    (
        "geodb_pg_xact_rollbacks_total",
        "Transactions rolled back, per database.",
        "xact_rollback",
    ),
    (
        "geodb_pg_deadlocks_total",
        "Deadlocks detected, per database.",
        "deadlocks",
    ),
    (
        "geodb_pg_temp_bytes_total",
        "Bytes written to temporary files, per database.",
        "temp_bytes",
    ),
];

fn database_families(rows: &[Row]) -> Vec<Family<'static>> {
    let mut families = vec![Family {
        name: "geodb_pg_database_size_bytes",
        kind: "gauge",
        help: "Size of each database.",
        samples: per_row(rows, "datname", "size_bytes", 1.0),
    }];
    families.extend(DATABASE_COUNTERS.iter().map(|(name, help, column)| Family {
        name,
        kind: "counter",
        help,
        samples: per_row(rows, "datname", column, 1.0),
    }));
    families
}

fn archiver_families(row: Option<&Row>) -> Vec<Family<'static>> {
    vec![
        Family {
            name: "geodb_pg_wal_archived_total",
            kind: "counter",
            help: "WAL segments archived since the statistics were reset.",
            samples: one(row, "archived_count", 1.0),
        },
        Family {
            name: "geodb_pg_wal_archive_failures_total",
            kind: "counter",
            help: "Failed attempts to archive a WAL segment.",
            samples: one(row, "failed_count", 1.0),
        },
        Family {
            name: "geodb_pg_wal_archive_last_success_age_seconds",
            kind: "gauge",
            help: "Seconds since a WAL segment was last archived.",
            samples: one(row, "last_success_age", 1.0),
        },
    ]
}

fn slow_labels(row: &Row) -> Option<String> {
    Some(labels(&[
        ("queryid", row.get("queryid")?.as_str()),
        ("datname", row.get("datname").map_or("", String::as_str)),
        ("user", row.get("user").map_or("", String::as_str)),
    ]))
}

fn slow_families(rows: &[Row]) -> Vec<Family<'static>> {
    let column = |c: &'static str| -> Vec<(String, f64)> {
        rows.iter()
            .filter_map(|r| Some((slow_labels(r)?, number(r, c)?)))
            .collect()
    };
    let count = rows.first().and_then(|r| number(r, "slow")).unwrap_or(0.0);
    vec![
        Family::single(
            "geodb_pg_slow_statements",
            "gauge",
            "Statements whose mean execution time is above the slow-query threshold.",
            count,
        ),
        Family {
            name: "geodb_pg_slow_statement_mean_seconds",
            kind: "gauge",
            help: "Mean execution time of the slowest statements (top 10), by query id.",
            samples: column("mean_seconds"),
        },
        Family {
            name: "geodb_pg_slow_statement_calls_total",
            kind: "counter",
            help: "Calls of the slowest statements (top 10), by query id.",
            samples: column("calls"),
        },
    ]
}

fn volume_families(usage: Option<Usage>) -> Vec<Family<'static>> {
    let Some(u) = usage else { return vec![] };
    vec![
        Family::single(
            "geodb_pg_data_volume_size_bytes",
            "gauge",
            "Size of the data volume's filesystem.",
            u.size_bytes,
        ),
        Family::single(
            "geodb_pg_data_volume_used_bytes",
            "gauge",
            "Bytes used on the data volume's filesystem.",
            u.used_bytes,
        ),
        Family::single(
            "geodb_pg_data_volume_used_ratio",
            "gauge",
            "Used share of the data volume, as df counts it (reserved blocks excluded).",
            u.used_ratio(),
        ),
    ]
}

/// The whole `/metrics` page of an instance.
pub fn render(scraped: &Scraped<'_>) -> String {
    let mut out = String::new();
    let up = if scraped.answers.is_some() { 1.0 } else { 0.0 };
    let mut families = vec![
        Family::single(
            "geodb_pg_up",
            "gauge",
            "1 when PostgreSQL answered this scrape.",
            up,
        ),
        Family::single(
            "geodb_pg_scrape_duration_seconds",
            "gauge",
            "How long this scrape took.",
            scraped.duration_seconds,
        ),
        Family::single(
            "geodb_pg_scrape_errors_total",
            "counter",
            "Metrics queries that failed.",
            scraped.errors_total as f64,
        ),
    ];
    families.extend(volume_families(scraped.volume));
    if let Some(a) = scraped.answers {
        families.extend(instance_families(a.instance.as_ref()));
        families.push(Family {
            name: "geodb_pg_connections",
            kind: "gauge",
            help: "Client connections by state.",
            samples: per_row(
                a.connections.as_deref().unwrap_or_default(),
                "state",
                "n",
                1.0,
            ),
        });
        families.extend(database_families(
            a.databases.as_deref().unwrap_or_default(),
        ));
        families.extend(archiver_families(a.archiver.as_ref()));
        families.push(Family {
            name: "geodb_pg_standby_lag_bytes",
            kind: "gauge",
            help: "On the primary, how far each connected standby's replay trails its WAL.",
            samples: per_row(
                a.standbys.as_deref().unwrap_or_default(),
                "standby",
                "lag_bytes",
                1.0,
            ),
        });
        if let Some(slow) = &a.slow {
            families.extend(slow_families(slow));
        }
    }
    for family in &families {
        family.write(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::runtime::exposition::row;

    fn replica() -> Answers {
        Answers {
            instance: Some(row(&[
                ("in_recovery", "1"),
                ("max_connections", "100"),
                ("slow_ms", "100"),
                ("lag_bytes", "16777216"),
                ("lag_seconds", "2.5"),
            ])),
            connections: Some(vec![
                row(&[("state", "active"), ("n", "3")]),
                row(&[("state", "idle in transaction"), ("n", "1")]),
            ]),
            databases: Some(vec![row(&[
                ("datname", "app"),
                ("size_bytes", "8000000"),
                ("xact_commit", "10"),
                ("xact_rollback", "1"),
                ("deadlocks", "0"),
                ("temp_bytes", "4096"),
            ])]),
            archiver: Some(row(&[("archived_count", "0"), ("failed_count", "0")])),
            standbys: Some(vec![]),
            slow: Some(vec![
                row(&[
                    ("queryid", "-42"),
                    ("datname", "app"),
                    ("user", "app"),
                    ("calls", "3"),
                    ("mean_seconds", "0.2"),
                    ("slow", "2"),
                ]),
                row(&[
                    ("queryid", "7"),
                    ("datname", "app"),
                    ("user", "o\"dd"),
                    ("calls", "1"),
                    ("mean_seconds", "0.15"),
                    ("slow", "2"),
                ]),
            ]),
            errors: 0,
        }
    }

    fn page(answers: Option<&Answers>) -> String {
        render(&Scraped {
            answers,
            volume: Some(Usage {
                size_bytes: 1000.0,
                used_bytes: 850.0,
                available_bytes: 150.0,
            }),
            duration_seconds: 0.004,
            errors_total: 2,
        })
    }

    #[test]
    fn a_replica_reports_its_role_lag_and_slow_statements_by_query_id() {
        let text = page(Some(&replica()));
        for line in [
            "geodb_pg_up 1\n",
            "geodb_pg_is_primary 0\n",
            "geodb_pg_max_connections 100\n",
            "geodb_pg_slow_query_threshold_seconds 0.1\n",
            "geodb_pg_replication_lag_bytes 16777216\n",
            "geodb_pg_replication_lag_seconds 2.5\n",
            "geodb_pg_connections{state=\"idle in transaction\"} 1\n",
            "geodb_pg_database_size_bytes{datname=\"app\"} 8000000\n",
            "# TYPE geodb_pg_xact_commits_total counter\n",
            "geodb_pg_temp_bytes_total{datname=\"app\"} 4096\n",
            "geodb_pg_wal_archive_failures_total 0\n",
            "geodb_pg_slow_statements 2\n",
            "geodb_pg_slow_statement_mean_seconds{queryid=\"-42\",datname=\"app\",user=\"app\"} 0.2\n",
            "geodb_pg_slow_statement_calls_total{queryid=\"7\",datname=\"app\",user=\"o\\\"dd\"} 1\n",
            "geodb_pg_data_volume_used_ratio 0.85\n",
            "geodb_pg_scrape_errors_total 2\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // Never archived: no age; a replica has no standbys of its own.
        assert!(!text.contains("geodb_pg_wal_archive_last_success_age_seconds"));
        assert!(!text.contains("geodb_pg_standby_lag_bytes"));
    }

    #[test]
    fn no_slow_statements_is_a_zero_and_a_disabled_threshold_is_absent() {
        let mut a = replica();
        a.slow = Some(vec![]);
        a.instance
            .as_mut()
            .unwrap()
            .insert("slow_ms".into(), "-1".into());
        let text = page(Some(&a));
        assert!(text.contains("geodb_pg_slow_statements 0\n"));
        assert!(!text.contains("geodb_pg_slow_query_threshold_seconds"));
        assert!(!text.contains("geodb_pg_slow_statement_mean_seconds"));
    }

    #[test]
    fn a_failed_query_leaves_its_families_out_and_down_keeps_the_volume() {
        let mut a = replica();
        a.slow = None;
        assert!(!page(Some(&a)).contains("geodb_pg_slow_statements"));
        let down = page(None);
        assert!(down.contains("geodb_pg_up 0\n"));
        assert!(down.contains("geodb_pg_data_volume_used_bytes 850\n"));
        assert!(!down.contains("geodb_pg_is_primary"));
    }
}
