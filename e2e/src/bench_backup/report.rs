//! The bench's report: figures in the order measured, their targets, the context; a
//! table on stdout (name, value, target, ok) and `target/bench/backup.json`.

use std::path::PathBuf;

use serde_json::{json, Map, Value};

use crate::kube_util::repo_root;

#[derive(Clone, Copy)]
pub enum Target {
    Min(f64),
    Max(f64),
}

#[derive(Default)]
pub struct Report {
    figures: Vec<(String, f64, Option<Target>)>,
    pub context: Map<String, Value>,
}

impl Report {
    pub fn figure(&mut self, name: &str, value: f64) {
        self.figures.push((name.to_owned(), value, None));
    }

    pub fn figure_with(&mut self, name: &str, value: f64, target: Target) {
        self.figures.push((name.to_owned(), value, Some(target)));
    }

    /// Add `name` as not measured unless it is there (a phase that failed or was
    /// skipped still shows its targeted figures).
    pub fn ensure(&mut self, name: &str, target: Target) {
        if !self.figures.iter().any(|(n, _, _)| n == name) {
            self.figures.push((name.to_owned(), f64::NAN, Some(target)));
        }
    }

    pub fn context(&mut self, name: &str, value: impl Into<Value>) {
        self.context.insert(name.to_owned(), value.into());
    }

    /// Every target met (a missing figure's target counts as not met).
    pub fn all_ok(&self) -> bool {
        self.figures
            .iter()
            .all(|(_, v, t)| t.is_none_or(|t| meets(*v, t)))
    }

    pub fn to_json(&self) -> Value {
        let mut figures = Map::new();
        let mut targets = Map::new();
        for (name, value, target) in &self.figures {
            // JSON has no NaN: a figure that could not be measured is left out.
            if value.is_finite() {
                figures.insert(name.clone(), json!(round(*value)));
            }
            match target {
                Some(Target::Min(n)) => targets.insert(name.clone(), json!({ "min": n })),
                Some(Target::Max(n)) => targets.insert(name.clone(), json!({ "max": n })),
                None => None,
            };
        }
        json!({ "figures": figures, "targets": targets, "context": self.context })
    }

    /// Print the table and write the JSON; its path.
    pub fn write(&self) -> anyhow::Result<PathBuf> {
        let dir = repo_root().join("target/bench");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("backup.json");
        std::fs::write(&path, serde_json::to_string_pretty(&self.to_json())?)?;
        println!(
            "{:<36} {:>12} {:>10} {:>4}",
            "name", "value", "target", "ok"
        );
        for (name, value, target) in &self.figures {
            let (target_text, ok) = match target {
                Some(t @ Target::Min(n)) => (format!(">= {n}"), ok_text(*value, *t)),
                Some(t @ Target::Max(n)) => (format!("<= {n}"), ok_text(*value, *t)),
                None => (String::new(), ""),
            };
            let value = if value.is_finite() {
                format!("{value:.2}")
            } else {
                "skipped".to_owned()
            };
            println!("{name:<36} {value:>12} {target_text:>10} {ok:>4}");
        }
        println!("written: {}", path.display());
        Ok(path)
    }
}

fn meets(value: f64, target: Target) -> bool {
    match target {
        Target::Min(n) => value >= n,
        Target::Max(n) => value <= n,
    }
}

fn ok_text(value: f64, target: Target) -> &'static str {
    if !value.is_finite() {
        "-"
    } else if meets(value, target) {
        "yes"
    } else {
        "NO"
    }
}

/// Three decimals are plenty and keep the JSON readable.
fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_and_targets() {
        let mut r = Report::default();
        r.figure_with("wal_push_ratio", 1.23456, Target::Min(1.0));
        r.figure_with("rpo_s", f64::NAN, Target::Max(60.0));
        r.figure("segments_count", 200.0);
        r.context("cores", 2);
        let v = r.to_json();
        assert_eq!(v["figures"]["wal_push_ratio"], json!(1.235));
        assert!(v["figures"].get("rpo_s").is_none());
        assert_eq!(v["targets"]["rpo_s"], json!({"max": 60.0}));
        assert_eq!(v["targets"]["wal_push_ratio"], json!({"min": 1.0}));
        assert_eq!(v["context"]["cores"], json!(2));
        assert!(!r.all_ok());
    }
}
