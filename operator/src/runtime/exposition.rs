//! The Prometheus text format for the endpoints that render what a server answered
//! (the agent's PostgreSQL exporter, the pooler's PgBouncer console): rows of text
//! values in, metric families out. The operator's own metrics use `prometheus-client`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One row of an answer: column name to its text value.
pub type Row = BTreeMap<String, String>;

/// The number in `column` of `row`; `None` when absent, NULL or not a number.
pub fn number(row: &Row, column: &str) -> Option<f64> {
    row.get(column)?.trim().parse().ok()
}

/// A row from (column, value) pairs, for tests of the renderers.
#[cfg(test)]
pub fn row(pairs: &[(&str, &str)]) -> Row {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The rows of a simple-query answer (NULLs left out of each row).
pub fn rows_of(messages: &[tokio_postgres::SimpleQueryMessage]) -> Vec<Row> {
    messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                row.columns()
                    .iter()
                    .enumerate()
                    .filter_map(|(i, c)| Some((c.name().to_owned(), row.get(i)?.to_owned())))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// A label value, escaped for the text format.
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `name="value",...` of `pairs`, values escaped.
pub fn labels(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(name, value)| format!("{name}=\"{}\"", escape(value)))
        .collect::<Vec<_>>()
        .join(",")
}

/// One metric family: its samples are (rendered labels, value).
pub struct Family<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub help: &'a str,
    pub samples: Vec<(String, f64)>,
}

impl Family<'_> {
    /// A family of one unlabelled sample.
    pub fn single<'a>(name: &'a str, kind: &'a str, help: &'a str, value: f64) -> Family<'a> {
        Family {
            name,
            kind,
            help,
            samples: vec![(String::new(), value)],
        }
    }

    /// Append the family to `out`; a family without samples writes nothing.
    pub fn write(&self, out: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, value) in &self.samples {
            if labels.is_empty() {
                let _ = writeln!(out, "{} {value}", self.name);
            } else {
                let _ = writeln!(out, "{}{{{labels}}} {value}", self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_without_samples_are_left_out_and_labels_are_escaped() {
        let mut out = String::new();
        Family {
            name: "x",
            kind: "gauge",
            help: "h",
            samples: vec![],
        }
        .write(&mut out);
        assert!(out.is_empty());
        Family {
            name: "x_total",
            kind: "counter",
            help: "h",
            samples: vec![(labels(&[("q", "a\"b\\c\nd")]), 2.0)],
        }
        .write(&mut out);
        assert_eq!(
            out,
            "# HELP x_total h\n# TYPE x_total counter\nx_total{q=\"a\\\"b\\\\c\\nd\"} 2\n"
        );
    }
}
