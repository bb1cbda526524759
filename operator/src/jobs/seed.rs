//! `geodb seed --count N`: N random locations in Ho Chi Minh City and Hanoi (about half
//! each), with their images (about one each) and moderation logs, into the tables of
//! `config/samples/migrations` (run `geodb migrate` first).
//!
//! It connects as `geodb migrate` does (`PGHOST`, `PGPORT`, `PGUSER`,
//! `GEODB_PASSWORD_FILE`, `GEODB_DATABASE`, `PGSSLMODE`, `PGSSLROOTCERT`; see
//! [`crate::jobs::migrate`]). Batches of [`BATCH`] locations are loaded over
//! `--workers` connections with binary COPY, each batch (its locations, images and
//! logs) in one transaction: a failure leaves whole batches only. Location ids are
//! taken from the table's sequence, so a seed can run beside other writers. A
//! progress bar is drawn on stderr when stderr is a terminal; the last stdout line is a
//! JSON summary (`{"locations":N,"images":N,"moderation_logs":N,"seconds":S,
//! "locations_per_second":R,"bulk":B}`).
//!
//! Into empty tables the role owns, the load is one transaction that builds the indexes
//! and foreign keys after the rows instead ([`bulk`]); `bulk: false` keeps them in place.

mod bulk;
mod rows;

pub use rows::{
    Bounds, ADJECTIVES, CATEGORIES, CITIES, HANOI, HO_CHI_MINH_CITY, KINDS, STATUSES, STREETS,
};

use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::SinkExt as _;
use rand::rngs::StdRng;
use rand::SeedableRng as _;
use serde::Serialize;
use tokio_postgres::Client;
use tracing::{debug, info};

use super::connection::{ConnectionError, Target, CONNECT_WAIT};
use crate::postgres::sql::literal;

pub const APPLICATION_NAME: &str = "geodb-seed";
/// Locations per batch (one transaction, three COPYs).
pub const BATCH: u64 = 10_000;
pub const DEFAULT_WORKERS: usize = 2;

#[derive(Debug, Clone)]
pub struct Args {
    pub count: u64,
    pub workers: usize,
    /// The same seed loads the same rows (ids aside).
    pub seed: Option<u64>,
    /// Empty tables owned by the role are loaded in one transaction, their indexes and
    /// foreign keys made after the rows.
    pub bulk: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error("{what}: {message}")]
    Database { what: &'static str, message: String },
    #[error(
        "table locations has no id sequence: run geodb migrate with the sample migrations first"
    )]
    NoSchema,
    #[error("{0}")]
    Runtime(String),
}

impl SeedError {
    /// A stable label for logs.
    pub fn label(&self) -> &'static str {
        match self {
            SeedError::Connection(e) => e.label(),
            SeedError::Database { .. } => "database",
            SeedError::NoSchema => "no_schema",
            SeedError::Runtime(_) => "runtime",
        }
    }

    fn database(what: &'static str) -> impl Fn(tokio_postgres::Error) -> Self {
        move |error| SeedError::Database {
            what,
            message: super::connection::describe(&error),
        }
    }
}

/// What a seed loaded (its last stdout line).
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Summary {
    pub locations: u64,
    pub images: u64,
    pub moderation_logs: u64,
    pub seconds: f64,
    pub locations_per_second: f64,
    /// Loaded by the bulk path (indexes built after the rows).
    #[serde(default)]
    pub bulk: bool,
}

/// The work the workers share: the next batch to take, and what is done.
struct Shared {
    count: u64,
    seed: u64,
    now_us: i64,
    next: AtomicU64,
    done: AtomicU64,
}

/// Run `geodb seed` with the settings from the environment.
pub fn command(args: &Args) -> Result<Summary, SeedError> {
    let target = Target::from_env()?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.clamp(1, 2))
        .enable_all()
        .build()
        .map_err(|e| SeedError::Runtime(format!("tokio runtime: {e}")))?
        .block_on(seed(&target, args))
}

/// Load `args.count` locations into `target`'s database.
pub async fn seed(target: &Target, args: &Args) -> Result<Summary, SeedError> {
    let started = Instant::now();
    let now_us = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let shared = Arc::new(Shared {
        count: args.count,
        seed: args.seed.unwrap_or_else(|| {
            use rand::RngCore as _;
            StdRng::from_os_rng().next_u64()
        }),
        now_us,
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
    });
    info!(count = args.count, workers = args.workers, server = %target, "seeding");
    let progress = std::io::stderr()
        .is_terminal()
        .then(|| tokio::spawn(draw_progress(shared.clone())));
    let mut summary = Summary::default();
    let mut failure = None;
    let bulk = match args.bulk {
        true => bulk_load(target, &shared).await,
        false => Ok(None),
    };
    let mut workers = Vec::new();
    match bulk {
        Ok(Some((images, logs))) => {
            (summary.images, summary.moderation_logs, summary.bulk) = (images, logs, true);
        }
        Ok(None) => {
            for _ in 0..args.workers.max(1) {
                let (target, shared) = (target.clone(), shared.clone());
                workers.push(tokio::spawn(async move { worker(&target, &shared).await }));
            }
        }
        Err(e) => failure = Some(e),
    }
    for worker in workers {
        match worker.await {
            Ok(Ok((images, logs))) => {
                summary.images += images;
                summary.moderation_logs += logs;
            }
            Ok(Err(e)) => {
                // The others stop at their next batch.
                shared.next.store(u64::MAX / 2, Ordering::SeqCst);
                failure.get_or_insert(e);
            }
            Err(e) => {
                failure.get_or_insert(SeedError::Runtime(format!("a worker stopped: {e}")));
            }
        }
    }
    if let Some(progress) = progress {
        progress.abort();
        let _ = progress.await;
        render(
            shared.done.load(Ordering::SeqCst),
            shared.count,
            started.elapsed(),
        );
        eprintln!();
    }
    summary.locations = shared.done.load(Ordering::SeqCst);
    summary.seconds = started.elapsed().as_secs_f64();
    summary.locations_per_second = summary.locations as f64 / summary.seconds.max(1e-9);
    match failure {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

/// The bulk path on one connection: the images and logs written, or `None` when the
/// tables are not empty or not the role's.
async fn bulk_load(target: &Target, shared: &Arc<Shared>) -> Result<Option<(u64, u64)>, SeedError> {
    let mut client = target.connect(APPLICATION_NAME, CONNECT_WAIT).await?;
    prepare_session(&client).await?;
    let next_ids = next_ids_sql(&client).await?;
    bulk::load(&mut client, shared, &next_ids).await
}

/// The query that takes `$1` location ids from the table's sequence.
async fn next_ids_sql(client: &Client) -> Result<String, SeedError> {
    let sequence: Option<String> = client
        .query_one("SELECT pg_get_serial_sequence('locations', 'id')", &[])
        .await
        .map_err(|_| SeedError::NoSchema)?
        .get(0);
    Ok(format!(
        "SELECT nextval({}::regclass) FROM generate_series(1, $1::int)",
        literal(&sequence.ok_or(SeedError::NoSchema)?)
    ))
}

/// The rows of batch `index` for the locations `ids` (pure).
fn make_batch(shared: &Shared, index: u64, ids: &[i64]) -> rows::Batch {
    let mut rng = StdRng::seed_from_u64(shared.seed.wrapping_add(index));
    let span = rows::Span {
        first: index.saturating_mul(BATCH),
        count: shared.count,
    };
    rows::generate(&mut rng, ids, span, shared.now_us)
}

/// Take batches until none is left; the images and logs written.
async fn worker(target: &Target, shared: &Shared) -> Result<(u64, u64), SeedError> {
    let mut client = target.connect(APPLICATION_NAME, CONNECT_WAIT).await?;
    prepare_session(&client).await?;
    let next_ids = next_ids_sql(&client).await?;
    let (mut images, mut logs) = (0, 0);
    loop {
        let index = shared.next.fetch_add(1, Ordering::SeqCst);
        let first = index.saturating_mul(BATCH);
        if first >= shared.count {
            return Ok((images, logs));
        }
        let n = (shared.count - first).min(BATCH);
        let n = i32::try_from(n).unwrap_or(i32::MAX);
        let ids: Vec<i64> = client
            .query(&next_ids, &[&n])
            .await
            .map_err(SeedError::database("taking location ids"))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let batch = make_batch(shared, index, &ids);
        images += batch.image_count;
        logs += batch.log_count;
        let tx = client
            .transaction()
            .await
            .map_err(SeedError::database("starting a batch"))?;
        load_copies(&tx, batch).await?;
        tx.commit()
            .await
            .map_err(SeedError::database("committing a batch"))?;
        shared.done.fetch_add(ids.len() as u64, Ordering::SeqCst);
    }
}

/// The tables' own triggers and rules: what replica mode would skip besides the
/// foreign key checks.
const OTHER_TRIGGERS: &str = "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
       (SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgrelid IN
            (to_regclass('locations'), to_regclass('images'), to_regclass('moderation_logs')))
     + (SELECT count(*) FROM pg_rewrite WHERE ev_class IN
            (to_regclass('locations'), to_regclass('images'), to_regclass('moderation_logs')))";

/// Settings of a seed's session. A lost last batch on a crash is fine for test data;
/// waiting on every flush is not. The
/// images and logs of a batch reference only locations of the same transaction, so the
/// foreign key checks (a row lock on each location, half the load's time) prove
/// nothing: a superuser skips them (replica mode), unless the tables have triggers or
/// rules of their own, which that would skip too.
async fn prepare_session(client: &Client) -> Result<(), SeedError> {
    client
        .batch_execute("SET synchronous_commit = off")
        .await
        .map_err(SeedError::database("setting up the session"))?;
    let row = client
        .query_one(OTHER_TRIGGERS, &[])
        .await
        .map_err(SeedError::database("looking up the tables' triggers"))?;
    let (superuser, others): (Option<bool>, i64) = (row.get(0), row.get(1));
    if superuser == Some(true) && others == 0 {
        client
            .batch_execute("SET session_replication_role = replica")
            .await
            .map_err(SeedError::database("setting up the session"))?;
        debug!("foreign key checks skipped: the rows reference their own batch");
    } else {
        debug!(superuser, others, "foreign key checks kept");
    }
    Ok(())
}

/// One batch's three COPYs, in the caller's transaction.
async fn load_copies(
    tx: &tokio_postgres::Transaction<'_>,
    batch: rows::Batch,
) -> Result<(), SeedError> {
    for (table, columns, data) in [
        ("locations", rows::LOCATION_COLUMNS, batch.locations),
        ("images", rows::IMAGE_COLUMNS, batch.images),
        ("moderation_logs", rows::LOG_COLUMNS, batch.moderation_logs),
    ] {
        let copy = format!("COPY {table} ({columns}) FROM STDIN (FORMAT binary)");
        let sink = tx
            .copy_in::<_, std::io::Cursor<Vec<u8>>>(&copy)
            .await
            .map_err(SeedError::database("starting a COPY"))?;
        let mut sink = Box::pin(sink);
        sink.send(std::io::Cursor::new(data))
            .await
            .map_err(SeedError::database("sending a COPY"))?;
        sink.as_mut()
            .finish()
            .await
            .map_err(SeedError::database("loading a batch"))?;
    }
    Ok(())
}

/// Redraw the bar on stderr every 200 ms until aborted.
async fn draw_progress(shared: Arc<Shared>) {
    let started = Instant::now();
    loop {
        render(
            shared.done.load(Ordering::SeqCst),
            shared.count,
            started.elapsed(),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn render(done: u64, count: u64, elapsed: Duration) {
    let line = progress_line(done, count, elapsed);
    let mut stderr = std::io::stderr().lock();
    let _ = write!(stderr, "\r{line}");
    let _ = stderr.flush();
}

/// `[#########...........]  45% 450000/1000000 locations, 91000/s`
pub fn progress_line(done: u64, count: u64, elapsed: Duration) -> String {
    const WIDTH: u64 = 30;
    let count = count.max(1);
    let filled = (done.min(count) * WIDTH / count) as usize;
    let percent = done.min(count) * 100 / count;
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
    format!(
        "[{}{}] {percent:>3}% {done}/{count} locations, {rate:.0}/s",
        "#".repeat(filled),
        ".".repeat(WIDTH as usize - filled)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines() {
        assert_eq!(
            progress_line(450_000, 1_000_000, Duration::from_secs(5)),
            "[#############.................]  45% 450000/1000000 locations, 90000/s"
        );
        assert!(progress_line(10, 10, Duration::ZERO)
            .starts_with("[##############################] 100%"));
    }

    #[test]
    fn bounds_hold_the_cities() {
        for city in CITIES {
            assert!(
                city.lon.0 < city.lon.1 && city.lat.0 < city.lat.1,
                "{city:?}"
            );
        }
    }
}
