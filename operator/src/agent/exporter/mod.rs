//! `/metrics` of an instance pod, served by the agent: PostgreSQL's state from a handful
//! of queries on one connection that the agent keeps open (a scrape never opens a
//! connection per metric, and usually none at all), plus the data volume's usage from
//! the filesystem. A scrape is bounded in time; a connection that timed out or broke is
//! dropped and opened again by the next scrape.

mod custom;
mod queries;
mod render;
mod volume;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio_postgres::Client;
use tracing::{debug, warn};

pub use custom::{parse, CustomQuery, CUSTOM_QUERIES_FILE};
use render::{render, Scraped};

/// The longest a scrape takes; PostgreSQL cancels a statement after this too
/// (`statement_timeout`), so a stuck query cannot hold the connection.
pub const SCRAPE_BOUND: Duration = Duration::from_secs(3);

/// What the exporter needs of the agent's settings.
#[derive(Clone, Debug)]
pub struct Target {
    pub socket_dir: PathBuf,
    pub database: String,
    pub pgdata: PathBuf,
}

/// The custom queries file as last read, and its queries.
#[derive(Default)]
struct Custom {
    text: Option<String>,
    queries: Vec<CustomQuery>,
}

#[derive(Clone)]
pub struct Exporter {
    target: Target,
    custom_file: PathBuf,
    custom: Arc<std::sync::Mutex<Custom>>,
    client: Arc<Mutex<Option<Client>>>,
    errors: Arc<AtomicU64>,
    /// Since when replay has trailed what was received (see `queries::fill_lag_seconds`).
    behind_since: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Exporter {
    pub fn new(target: Target, custom_file: PathBuf) -> Self {
        Self {
            target,
            custom_file,
            custom: Arc::default(),
            client: Arc::new(Mutex::new(None)),
            errors: Arc::new(AtomicU64::new(0)),
            behind_since: Arc::default(),
        }
    }

    async fn connect(&self) -> Option<Client> {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.target.socket_dir)
            .port(crate::names::POSTGRES_PORT as u16)
            .user(crate::names::SUPERUSER)
            .dbname(&self.target.database)
            .application_name("geodb-exporter")
            // Not log_min_duration_statement: the queries read this session's value of it.
            .options(format!("-c statement_timeout={}", SCRAPE_BOUND.as_millis()))
            .connect_timeout(SCRAPE_BOUND);
        match config.connect(tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                Some(client)
            }
            Err(error) => {
                debug!(%error, "the exporter cannot reach PostgreSQL");
                None
            }
        }
    }

    /// The custom queries, read again when the mounted file changed (the kubelet updates
    /// a ConfigMap volume in place); a file that does not parse is logged once and left
    /// out (the operator refuses such a ConfigMap before it is mounted).
    async fn custom_queries(&self) -> Vec<CustomQuery> {
        let text = tokio::fs::read_to_string(&self.custom_file).await.ok();
        let Ok(mut custom) = self.custom.lock() else {
            return vec![];
        };
        if custom.text != text {
            custom.queries = match text.as_deref().map(parse) {
                Some(Ok(queries)) => queries,
                Some(Err(error)) => {
                    warn!(%error, "custom metric queries left out");
                    vec![]
                }
                None => vec![],
            };
            custom.text = text;
        }
        custom.queries.clone()
    }

    /// One scrape: the page, and whether PostgreSQL answered.
    async fn ask(&self) -> (Option<queries::Answers>, Vec<String>) {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = self.connect().await;
        }
        let Some(client) = slot.as_ref() else {
            return (None, vec![]);
        };
        let mut answers = queries::scrape(client).await;
        if let (Some(row), Ok(mut since)) = (answers.instance.as_mut(), self.behind_since.lock()) {
            queries::fill_lag_seconds(row, &mut since, Instant::now());
        }
        let queries = self.custom_queries().await;
        let custom = custom::run(client, &queries, &mut answers.errors).await;
        if answers.instance.is_none() && client.is_closed() {
            *slot = None;
            return (None, vec![]);
        }
        (Some(answers), custom)
    }

    /// The `/metrics` page.
    pub async fn page(&self) -> String {
        let started = Instant::now();
        let volume_path = self.target.pgdata.clone();
        let volume = tokio::task::spawn_blocking(move || volume::usage(&volume_path))
            .await
            .ok()
            .flatten();
        let (answers, custom) = match tokio::time::timeout(SCRAPE_BOUND, self.ask()).await {
            Ok(answered) => answered,
            Err(_) => {
                // The connection may be mid-query: start afresh next time.
                *self.client.lock().await = None;
                self.errors.fetch_add(1, Ordering::Relaxed);
                (None, vec![])
            }
        };
        if let Some(a) = &answers {
            self.errors.fetch_add(a.errors, Ordering::Relaxed);
        }
        let mut page = render(&Scraped {
            answers: answers.as_ref(),
            volume,
            duration_seconds: started.elapsed().as_secs_f64(),
            errors_total: self.errors.load(Ordering::Relaxed),
        });
        for family in custom {
            page.push_str(&family);
        }
        page
    }
}
