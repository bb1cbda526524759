//! The report: a table for people, then one JSON object for scripts (pure).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use super::stats::Latencies;

/// One query measured on one target.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub query: &'static str,
    pub target: String,
    pub latencies: Latencies,
}

/// The radius search with index scans off, against the same search with them.
#[derive(Debug, Clone, PartialEq)]
pub struct NoIndex {
    pub target: String,
    pub latencies: Latencies,
    /// Its median over the indexed search's.
    pub ratio: f64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    pub measured: Vec<Measured>,
    pub no_index: Option<NoIndex>,
    /// The rows of `locations` (on the first target).
    pub rows_count: i64,
    /// Each query's indexes, as its plan used them (`a+b` when several).
    pub plans: BTreeMap<String, String>,
}

/// Three decimals: microseconds, for milliseconds.
fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

impl Report {
    /// `query target p50_ms p99_ms max_ms rows`, aligned, one line each.
    pub fn table(&self) -> String {
        let mut lines = vec![[
            "query".to_owned(),
            "target".to_owned(),
            "p50_ms".to_owned(),
            "p99_ms".to_owned(),
            "max_ms".to_owned(),
            "rows".to_owned(),
        ]];
        let mut add = |query: &str, target: &str, l: &Latencies| {
            lines.push([
                query.to_owned(),
                target.to_owned(),
                format!("{:.3}", l.p50_ms),
                format!("{:.3}", l.p99_ms),
                format!("{:.3}", l.max_ms),
                format!("{:.1}", l.rows),
            ]);
        };
        for m in &self.measured {
            add(m.query, &m.target, &m.latencies);
        }
        if let Some(n) = &self.no_index {
            add("radius_no_index", &n.target, &n.latencies);
        }
        let widths: Vec<usize> = (0..6)
            .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for line in &lines {
            let cells: Vec<String> = line
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (cell, w))| match i {
                    0 | 1 => format!("{cell:<w$}"),
                    _ => format!("{cell:>w$}"),
                })
                .collect();
            let _ = writeln!(out, "{}", cells.join("  ").trim_end());
        }
        if let Some(n) = &self.no_index {
            let _ = writeln!(
                out,
                "radius without index scans: {:.1}x the median with them",
                n.ratio
            );
        }
        out
    }

    /// `{"figures": {"<query>_<target>_p50_ms": .., "<query>_<target>_p99_ms": ..,
    /// "radius_no_index_p50_ms": .., "radius_no_index_ratio": .., "rows_count": N},
    /// "plans": {"<query>": "<index>"}}`
    pub fn json(&self) -> Value {
        let mut figures = Map::new();
        for m in &self.measured {
            let key = format!("{}_{}", m.query, m.target);
            figures.insert(format!("{key}_p50_ms"), json!(round(m.latencies.p50_ms)));
            figures.insert(format!("{key}_p99_ms"), json!(round(m.latencies.p99_ms)));
        }
        if let Some(n) = &self.no_index {
            figures.insert(
                "radius_no_index_p50_ms".into(),
                json!(round(n.latencies.p50_ms)),
            );
            figures.insert("radius_no_index_ratio".into(), json!(round(n.ratio)));
        }
        figures.insert("rows_count".into(), json!(self.rows_count));
        json!({"figures": figures, "plans": self.plans})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latencies(p50_ms: f64) -> Latencies {
        Latencies {
            p50_ms,
            p99_ms: p50_ms * 2.0,
            max_ms: p50_ms * 3.0,
            rows: 12.0,
        }
    }

    fn report() -> Report {
        Report {
            measured: vec![
                Measured {
                    query: "radius_1km",
                    target: "direct".into(),
                    latencies: latencies(0.5),
                },
                Measured {
                    query: "knn10",
                    target: "pooler".into(),
                    latencies: latencies(0.1234567),
                },
            ],
            no_index: Some(NoIndex {
                target: "direct".into(),
                latencies: latencies(150.0),
                ratio: 300.0,
            }),
            rows_count: 1_000_000,
            plans: [("radius_1km".to_owned(), "locations_geom_idx".to_owned())].into(),
        }
    }

    #[test]
    fn the_json_object() {
        assert_eq!(
            report().json().to_string(),
            concat!(
                r#"{"figures":{"knn10_pooler_p50_ms":0.123,"knn10_pooler_p99_ms":0.247,"#,
                r#""radius_1km_direct_p50_ms":0.5,"radius_1km_direct_p99_ms":1.0,"#,
                r#""radius_no_index_p50_ms":150.0,"radius_no_index_ratio":300.0,"#,
                r#""rows_count":1000000},"plans":{"radius_1km":"locations_geom_idx"}}"#
            )
        );
    }

    #[test]
    fn the_table() {
        let table = report().table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "query            target   p50_ms   p99_ms   max_ms  rows"
        );
        assert_eq!(
            lines[1],
            "radius_1km       direct    0.500    1.000    1.500  12.0"
        );
        assert_eq!(
            lines[3],
            "radius_no_index  direct  150.000  300.000  450.000  12.0"
        );
        assert_eq!(
            lines[4],
            "radius without index scans: 300.0x the median with them"
        );
    }
}
