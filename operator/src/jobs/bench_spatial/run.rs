//! The runs against one server: the plan check, then each query timed on one
//! connection with statements prepared once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use serde_json::Value;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, Statement};

use super::error::{BenchError, PlanFailure};
use super::plan;
use super::queries::{Query, ALL};
use super::stats::Latencies;
use crate::jobs::connection::{Target, CONNECT_WAIT};

pub const APPLICATION_NAME: &str = "geodb-bench";

/// A connection to one named target, its statements prepared.
pub struct Session {
    pub name: String,
    client: Client,
    statements: Vec<(Query, Statement)>,
}

/// The text of a `json` value (EXPLAIN's output), which tokio-postgres does not read
/// without serde support built in.
struct Json(String);

impl<'a> FromSql<'a> for Json {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Json(std::str::from_utf8(raw)?.to_owned()))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSON
    }
}

impl Session {
    /// Connect, and prepare every query; `settings` is SQL run first (e.g. `SET`s).
    pub async fn open(name: &str, target: &Target, settings: &str) -> Result<Self, BenchError> {
        let client = target.connect(APPLICATION_NAME, CONNECT_WAIT).await?;
        let db = |what: &str| BenchError::database(what.to_owned(), name);
        if !settings.is_empty() {
            client
                .batch_execute(settings)
                .await
                .map_err(db("setting up the session"))?;
        }
        let mut statements = Vec::new();
        for query in ALL {
            let statement = client
                .prepare(query.sql())
                .await
                .map_err(db(&format!("preparing {}", query.name())))?;
            statements.push((query, statement));
        }
        Ok(Self {
            name: name.to_owned(),
            client,
            statements,
        })
    }

    /// The rows of `locations`; none is an error (nothing to measure).
    pub async fn rows_count(&self) -> Result<i64, BenchError> {
        let count: i64 = self
            .client
            .query_one("SELECT count(*) FROM locations", &[])
            .await
            .map_err(BenchError::database("counting locations", &self.name))?
            .get(0);
        if count == 0 {
            return Err(BenchError::NoRows(self.name.clone()));
        }
        Ok(count)
    }

    /// `EXPLAIN (ANALYZE, FORMAT JSON)` of `query` with its sample parameters.
    pub async fn explain(&self, query: Query) -> Result<Value, BenchError> {
        let sql = format!("EXPLAIN (ANALYZE, FORMAT JSON) {}", query.sql());
        let params = query.sample();
        let row = self
            .client
            .query_one(&sql, &params.as_sql())
            .await
            .map_err(BenchError::database(
                format!("explaining {}", query.name()),
                &self.name,
            ))?;
        let Json(text) = row.get(0);
        serde_json::from_str(&text).map_err(|e| BenchError::BadPlan {
            what: format!("{} on {}", query.name(), self.name),
            message: e.to_string(),
        })
    }

    /// Every query's plan uses its indexes; their names by query, or each plan that
    /// does not (printed).
    pub async fn check_plans(&self) -> Result<BTreeMap<String, String>, BenchError> {
        let mut used = BTreeMap::new();
        let mut failures = Vec::new();
        for query in ALL {
            let explain = self.explain(query).await?;
            let missing = plan::missing(&explain, query.indexes()).map_err(|message| {
                BenchError::BadPlan {
                    what: format!("{} on {}", query.name(), self.name),
                    message,
                }
            })?;
            if missing.is_empty() {
                used.insert(query.name().to_owned(), query.indexes().join("+"));
            } else {
                failures.push(PlanFailure {
                    query: query.name(),
                    target: self.name.clone(),
                    missing,
                    plan: serde_json::to_string_pretty(&explain).unwrap_or_default(),
                });
            }
        }
        if failures.is_empty() {
            Ok(used)
        } else {
            Err(BenchError::PlanWithoutIndex(failures))
        }
    }

    /// `warmup` untimed runs of `query`, then `iterations` timed ones, each with new
    /// random parameters (made before its clock starts).
    pub async fn measure(
        &self,
        query: Query,
        warmup: usize,
        iterations: usize,
        rng: &mut StdRng,
    ) -> Result<Latencies, BenchError> {
        let statement = self
            .statements
            .iter()
            .find(|(q, _)| *q == query)
            .map(|(_, s)| s)
            .ok_or_else(|| BenchError::Runtime(format!("{} is not prepared", query.name())))?;
        let db = BenchError::database(format!("running {}", query.name()), &self.name);
        let mut runs = Vec::with_capacity(iterations);
        let mut rows = 0u64;
        for n in 0..warmup + iterations {
            let params = query.random(rng);
            let started = Instant::now();
            let result = self
                .client
                .query(statement, &params.as_sql())
                .await
                .map_err(&db)?;
            let took: Duration = started.elapsed();
            if n >= warmup {
                runs.push(took);
                rows += result.len() as u64;
            }
        }
        Latencies::of(runs, rows)
            .ok_or_else(|| BenchError::Runtime("no timed iteration".to_owned()))
    }
}
