//! User-defined metrics: queries from a ConfigMap (`spec.monitoring.customQueries`), each
//! turning the columns it names into gauges or counters and the others it names into
//! labels. The operator checks the file with [`parse`] before mounting it; the agent
//! parses it again at start and serves none of it if it is wrong.

use serde::Deserialize;
use tokio_postgres::Client;

use super::queries::ask;
use crate::runtime::exposition::{labels, number, Family, Row};

pub use crate::pod_contract::CUSTOM_QUERIES_FILE;

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Gauge,
    Counter,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Column {
    pub column: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    #[serde(default)]
    pub help: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CustomQuery {
    /// The metric name prefix: each metric is `<name>_<column>` (`_total` added to
    /// counters).
    pub name: String,
    pub query: String,
    #[serde(default)]
    pub labels: Vec<String>,
    pub metrics: Vec<Column>,
    /// Run only on the primary (tables a replica would report twice).
    #[serde(default)]
    pub primary_only: bool,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The metric name of `column` of `query`.
pub fn metric_name(query: &CustomQuery, column: &Column) -> String {
    let base = format!("{}_{}", query.name, column.column);
    match column.kind {
        Kind::Counter if !base.ends_with("_total") => format!("{base}_total"),
        _ => base,
    }
}

/// The queries of a ConfigMap's `queries.yaml`, or what is wrong with them (naming the
/// query and the field).
pub fn parse(text: &str) -> Result<Vec<CustomQuery>, String> {
    let queries: Vec<CustomQuery> =
        serde_yaml::from_str(text).map_err(|e| format!("{CUSTOM_QUERIES_FILE}: {e}"))?;
    let mut names = std::collections::BTreeSet::new();
    for (i, q) in queries.iter().enumerate() {
        let at = format!("{CUSTOM_QUERIES_FILE}[{i}]");
        if !valid_name(&q.name)
            || q.name.starts_with("geodb_pg_")
            || q.name.starts_with("pgbouncer_")
        {
            return Err(format!("{at}.name {:?}: a metric name ([A-Za-z_][A-Za-z0-9_]*) not in geodb's own namespaces", q.name));
        }
        if q.query.trim().is_empty() {
            return Err(format!("{at}.query is empty"));
        }
        if q.metrics.is_empty() {
            return Err(format!(
                "{at}.metrics: at least one column must be a metric"
            ));
        }
        for l in &q.labels {
            if !valid_name(l) {
                return Err(format!("{at}.labels: {l:?} is not a label name"));
            }
        }
        for (j, c) in q.metrics.iter().enumerate() {
            if !valid_name(&c.column) || q.labels.contains(&c.column) {
                return Err(format!(
                    "{at}.metrics[{j}].column {:?}: a name that is not also a label",
                    c.column
                ));
            }
            if !names.insert(metric_name(q, c)) {
                return Err(format!(
                    "{at}.metrics[{j}]: metric {} is defined twice",
                    metric_name(q, c)
                ));
            }
        }
    }
    Ok(queries)
}

/// The families of one query's rows (pure).
pub fn families(query: &CustomQuery, rows: &[Row]) -> String {
    let mut out = String::new();
    for column in &query.metrics {
        let name = metric_name(query, column);
        let help = column
            .help
            .clone()
            .unwrap_or_else(|| format!("Column {} of custom query {}.", column.column, query.name));
        let samples = rows
            .iter()
            .filter_map(|row| {
                let pairs: Vec<(&str, &str)> = query
                    .labels
                    .iter()
                    .map(|l| (l.as_str(), row.get(l).map_or("", String::as_str)))
                    .collect();
                Some((labels(&pairs), number(row, &column.column)?))
            })
            .collect();
        let kind = match column.kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        Family {
            name: &name,
            kind,
            help: &help,
            samples,
        }
        .write(&mut out);
    }
    out
}

/// Run every query that applies to this instance; each answer rendered.
pub async fn run(client: &Client, queries: &[CustomQuery], errors: &mut u64) -> Vec<String> {
    let mut pages = Vec::new();
    if queries.is_empty() {
        return pages;
    }
    let primary = ask(
        client,
        "role",
        "SELECT (NOT pg_is_in_recovery())::int AS p",
        errors,
    )
    .await
    .and_then(|rows| rows.first().and_then(|r| number(r, "p")))
        == Some(1.0);
    for q in queries.iter().filter(|q| primary || !q.primary_only) {
        if let Some(rows) = ask(client, &q.name, &q.query, errors).await {
            pages.push(families(q, &rows));
        }
    }
    pages
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
- name: app_locations
  query: SELECT category, count(*) AS n, sum(views) AS views FROM locations GROUP BY 1
  labels: [category]
  primaryOnly: true
  metrics:
    - column: n
      type: gauge
      help: Locations per category.
    - column: views
      type: counter
"#;

    #[test]
    fn parses_and_renders_columns_as_metrics_and_labels() {
        let q = parse(GOOD).unwrap();
        assert!(q[0].primary_only);
        let rows: Vec<Row> = vec![[("category", "park"), ("n", "3"), ("views", "10")]
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()];
        let text = families(&q[0], &rows);
        assert!(text.contains("# HELP app_locations_n Locations per category.\n"));
        assert!(text.contains("app_locations_n{category=\"park\"} 3\n"));
        assert!(text.contains("# TYPE app_locations_views_total counter\n"));
        assert!(text.contains("app_locations_views_total{category=\"park\"} 10\n"));
    }

    #[test]
    fn refuses_what_would_make_a_wrong_page_naming_the_field() {
        let cases = [
            ("- {name: geodb_pg_x, query: SELECT 1 AS a, metrics: [{column: a, type: gauge}]}", "[0].name"),
            ("- {name: 'a-b', query: SELECT 1 AS a, metrics: [{column: a, type: gauge}]}", "[0].name"),
            ("- {name: a, query: '  ', metrics: [{column: a, type: gauge}]}", "[0].query"),
            ("- {name: a, query: SELECT 1, metrics: []}", "[0].metrics"),
            ("- {name: a, query: SELECT 1, labels: [x], metrics: [{column: x, type: gauge}]}", "[0].metrics[0].column"),
            ("- {name: a, query: SELECT 1, metrics: [{column: x, type: histogram}]}", "queries.yaml"),
            ("- {name: a, query: SELECT 1, metrics: [{column: x, type: gauge}], extra: 1}", "queries.yaml"),
            ("- {name: a, query: SELECT 1, metrics: [{column: x, type: gauge}]}\n- {name: a, query: SELECT 2, metrics: [{column: x, type: gauge}]}", "[1].metrics[0]"),
        ];
        for (text, field) in cases {
            let error = parse(text).unwrap_err();
            assert!(error.contains(field), "{text}: {error}");
        }
    }
}
