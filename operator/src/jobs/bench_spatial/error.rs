//! What stops `geodb bench spatial`, each with a stable label.

use std::path::PathBuf;

use crate::jobs::connection::ConnectionError;

/// A query whose plan does not use the index it is meant to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanFailure {
    pub query: &'static str,
    pub target: String,
    pub missing: Vec<&'static str>,
    /// The plan, pretty-printed JSON.
    pub plan: String,
}

impl std::fmt::Display for PlanFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "query {} on {} does not use {}; its plan:\n{}",
            self.query,
            self.target,
            self.missing.join(", "),
            self.plan
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Connection(#[from] ConnectionError),

    #[error("--target {spec}: {reason}")]
    InvalidTarget { spec: String, reason: String },

    #[error("{what} on {target}: {message}")]
    Database {
        what: String,
        target: String,
        message: String,
    },

    #[error("table locations on {0} is empty: run geodb seed first")]
    NoRows(String),

    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    PlanWithoutIndex(Vec<PlanFailure>),

    #[error("{what}: {message}")]
    BadPlan { what: String, message: String },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{0}")]
    Runtime(String),
}

impl BenchError {
    /// A stable label for logs.
    pub fn label(&self) -> &'static str {
        match self {
            BenchError::Connection(e) => e.label(),
            BenchError::InvalidTarget { .. } => "invalid_target",
            BenchError::Database { .. } => "database",
            BenchError::NoRows(_) => "no_rows",
            BenchError::PlanWithoutIndex(_) => "plan_without_index",
            BenchError::BadPlan { .. } => "bad_plan",
            BenchError::Io { .. } => "io",
            BenchError::Runtime(_) => "runtime",
        }
    }

    /// A closure mapping a driver error to [`BenchError::Database`].
    pub fn database<'a>(
        what: impl std::fmt::Display + 'a,
        target: &'a str,
    ) -> impl Fn(tokio_postgres::Error) -> Self + 'a {
        move |error| BenchError::Database {
            what: what.to_string(),
            target: target.to_owned(),
            message: crate::jobs::connection::describe(&error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_failure_names_the_query_and_shows_the_plan() {
        let e = BenchError::PlanWithoutIndex(vec![PlanFailure {
            query: "radius_1km",
            target: "direct".into(),
            missing: vec!["locations_geom_idx"],
            plan: "{\"Node Type\": \"Seq Scan\"}".into(),
        }]);
        assert_eq!(e.label(), "plan_without_index");
        assert_eq!(
            e.to_string(),
            "query radius_1km on direct does not use locations_geom_idx; its plan:\n{\"Node Type\": \"Seq Scan\"}"
        );
    }
}
