//! `geodb bench spatial`: the latency of the sample schema's searches (radius 1 km,
//! bounding box, 10 nearest, full text, and a radius join to images) on one or more
//! servers, after checking that each query's plan uses its index.
//!
//! Connects like `geodb migrate` (see `jobs::connection`); `--target NAME=HOST:PORT
//! [:SERVERNAME]` measures other addresses with the same settings (e.g. a pooler beside
//! the primary). Per target and query: an `EXPLAIN (ANALYZE, FORMAT JSON)` whose plan
//! must name the query's index (else the run fails, printing the plan), then warm-up
//! runs and timed runs on one connection, each with new random parameters bound to a
//! statement prepared once. `--compare-no-index` times the radius search again with
//! index scans off in that session (the index stays) to show what the GIST index buys.
//!
//! The spatial join sets no `work_mem`: its plan is a nested loop over the GIST scan
//! and the images' foreign key index, which neither sorts nor hashes, and 64MB measured
//! the same (within noise) at 1,000,000 rows.
//!
//! The last stdout line is [`Report::json`].

mod error;
mod plan;
mod queries;
mod report;
mod run;
mod stats;
mod targets;

pub use error::{BenchError, PlanFailure};
pub use queries::{Query, ALL as QUERIES};
pub use report::{Measured, NoIndex, Report};
pub use stats::Latencies;

use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::SeedableRng as _;
use tracing::info;

use run::Session;

pub const DEFAULT_ITERATIONS: usize = 500;
pub const DEFAULT_WARMUP: usize = 50;
pub const DEFAULT_NO_INDEX_ITERATIONS: usize = 20;

/// Index scans off for one session: the planner must read the table (the index stays).
/// JIT off too: the scan's cost would compile it on every run, and the comparison is of
/// reading the table, not of compiling (it would only make the ratio larger).
const NO_INDEX: &str = "SET enable_indexscan = off; SET enable_bitmapscan = off; \
                        SET enable_indexonlyscan = off; SET jit = off";

#[derive(Debug, Clone)]
pub struct Args {
    /// `NAME=HOST:PORT[:SERVERNAME]` each; the environment's server as "direct" when
    /// empty.
    pub targets: Vec<String>,
    pub iterations: usize,
    pub warmup: usize,
    /// Time the radius search without index scans too, this many times.
    pub no_index_iterations: Option<usize>,
    /// Where to write the JSON object too.
    pub json_out: Option<PathBuf>,
    /// The same seed draws the same parameters.
    pub seed: Option<u64>,
}

/// Run `geodb bench spatial` with the settings from the environment.
pub fn command(args: &Args) -> Result<Report, BenchError> {
    let report = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Runtime(format!("tokio runtime: {e}")))?
        .block_on(bench(args))?;
    if let Some(path) = &args.json_out {
        std::fs::write(path, format!("{}\n", report.json())).map_err(|source| BenchError::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(report)
}

/// Check every target's plans, then measure.
pub async fn bench(args: &Args) -> Result<Report, BenchError> {
    let targets = targets::resolve(&args.targets, |name| std::env::var(name).ok())?;
    let mut sessions = Vec::new();
    for (name, target) in &targets {
        info!(target = %name, server = %target, "connecting");
        sessions.push(Session::open(name, target, "").await?);
    }
    let mut report = Report::default();
    let first = sessions
        .first()
        .ok_or_else(|| BenchError::Runtime("no target".to_owned()))?;
    report.rows_count = first.rows_count().await?;
    let mut failures = Vec::new();
    for session in &sessions {
        match session.check_plans().await {
            Ok(plans) => report.plans = plans,
            Err(BenchError::PlanWithoutIndex(mut found)) => failures.append(&mut found),
            Err(e) => return Err(e),
        }
    }
    if !failures.is_empty() {
        return Err(BenchError::PlanWithoutIndex(failures));
    }
    let mut rng = match args.seed {
        Some(seed) => StdRng::seed_from_u64(seed),
        None => StdRng::from_os_rng(),
    };
    for session in &sessions {
        for query in QUERIES {
            info!(target = %session.name, query = query.name(), "measuring");
            let latencies = session
                .measure(query, args.warmup, args.iterations, &mut rng)
                .await?;
            report.measured.push(Measured {
                query: query.name(),
                target: session.name.clone(),
                latencies,
            });
        }
    }
    if let Some(iterations) = args.no_index_iterations {
        let (name, target) = &targets[0];
        report.no_index = Some(no_index(name, target, iterations, &mut rng).await?);
    }
    Ok(report)
}

/// The radius search on the first target with index scans off, against the same search
/// with them: both over the same parameters, one right after the other, each after one
/// untimed run (the table and the index are in the cache for both).
async fn no_index(
    name: &str,
    target: &crate::jobs::connection::Target,
    iterations: usize,
    rng: &mut StdRng,
) -> Result<NoIndex, BenchError> {
    info!(target = %name, "measuring the radius search without index scans");
    let mut same = rng.clone();
    let with = Session::open(name, target, "")
        .await?
        .measure(Query::Radius, 1, iterations.max(1), &mut same)
        .await?;
    let session = Session::open(name, target, NO_INDEX).await?;
    let latencies = session
        .measure(Query::Radius, 1, iterations.max(1), rng)
        .await?;
    let indexed = with.p50_ms;
    Ok(NoIndex {
        target: name.to_owned(),
        ratio: latencies.p50_ms / indexed.max(1e-6),
        latencies,
    })
}
