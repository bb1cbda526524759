//! The health probe: one query that tells an instance's role, timeline, WAL positions,
//! replay state and replication slots.

use super::connect::{bounded, connect, Login, PgError, TIMEOUT};
use super::lsn;
use crate::pod_contract::{ARCHIVE_ERROR_FILE, DATA_DIR, KEPT_DATA_PREFIX};

/// One probe of one instance.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub in_recovery: bool,
    pub timeline: Option<i64>,
    /// Primary: current WAL position. Replica: last position received and flushed.
    pub lsn: Option<u64>,
    /// Replica: last position replayed.
    pub replayed_lsn: Option<u64>,
    pub replay_paused: bool,
    /// Replica: the WAL receiver is streaming.
    pub receiving: bool,
    /// Replica: seconds since the last message from the primary.
    pub last_message_age: Option<f64>,
    /// Replica: age of the last replayed transaction.
    pub replay_age: Option<f64>,
    /// Primary: physical replication slots the operator manages (not those invalidated
    /// for holding more WAL than `max_slot_wal_keep_size`: they are made again).
    pub slots: Vec<String>,
    /// Data directories set aside on the instance's volume (`pod_contract::KEPT_DATA_PREFIX`).
    pub kept_data: Vec<String>,
    /// Settings of the configuration file that PostgreSQL refuses, in its own words
    /// (`pg_file_settings`); it keeps running with its previous settings meanwhile.
    pub config_errors: Vec<String>,
    /// WAL archiving as this server sees it (`pg_stat_archiver`).
    pub archiver: Archiver,
}

/// `pg_stat_archiver`, the segments waiting, and the last error `geodb wal-push` wrote.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Archiver {
    pub last_archived_wal: Option<String>,
    /// Seconds since the last success.
    pub archived_age: Option<f64>,
    pub last_failed_wal: Option<String>,
    /// Seconds since the last failure.
    pub failed_age: Option<f64>,
    pub failed_count: i64,
    /// Segments ready and not yet archived.
    pub waiting: i64,
    /// The last error of `geodb wal-push` (`pod_contract::ARCHIVE_ERROR_FILE`), if any.
    pub last_error: Option<String>,
}

impl Sample {
    /// A replica sample (in recovery).
    pub fn replica(&self) -> Option<&Sample> {
        Some(self).filter(|s| s.in_recovery)
    }

    /// A primary sample (not in recovery).
    pub fn primary(&self) -> Option<&Sample> {
        Some(self).filter(|s| !s.in_recovery)
    }
}

/// The probe query; its last column lists the kept data directories of the volume.
fn probe_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "{PROBE_SQL}, ARRAY(SELECT f FROM pg_ls_dir('{DATA_DIR}', true, false) f WHERE f LIKE '{}%' ORDER BY 1), {CONFIG_ERRORS_SQL}, {ARCHIVER_SQL}, \
             pg_read_file('{DATA_DIR}/{ARCHIVE_ERROR_FILE}', true)",
            KEPT_DATA_PREFIX.replace('_', "\\_")
        )
    })
}

/// The archiver's view: last success and failure, their ages, failures, segments waiting.
const ARCHIVER_SQL: &str = "(SELECT last_archived_wal FROM pg_stat_archiver), \
    (SELECT extract(epoch FROM now() - last_archived_time)::float8 FROM pg_stat_archiver), \
    (SELECT last_failed_wal FROM pg_stat_archiver), \
    (SELECT extract(epoch FROM now() - last_failed_time)::float8 FROM pg_stat_archiver), \
    (SELECT failed_count FROM pg_stat_archiver), \
    (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready')";

/// What PostgreSQL refuses in its configuration file, worded as its log words it.
const CONFIG_ERRORS_SQL: &str = "ARRAY(SELECT CASE WHEN error = 'unrecognized configuration parameter' \
      THEN format('unrecognized configuration parameter \"%s\" in file \"%s\" line %s', name, sourcefile, sourceline) \
      ELSE format('invalid value for parameter \"%s\": \"%s\" in file \"%s\" line %s (%s)', name, setting, sourcefile, sourceline, error) END \
    FROM pg_file_settings WHERE error IS NOT NULL ORDER BY sourcefile, sourceline)";

const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
    (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END)::text, \
    pg_last_wal_replay_lsn()::text, \
    CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END, \
    COALESCE((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false), \
    (SELECT extract(epoch FROM now() - last_msg_receipt_time)::float8 FROM pg_stat_wal_receiver), \
    extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, \
    CASE WHEN pg_is_in_recovery() \
      THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver WHERE received_tli > 0), (SELECT timeline_id FROM pg_control_checkpoint()))::int8 \
      ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int8 END, \
    ARRAY(SELECT slot_name::text FROM pg_replication_slots WHERE slot_type = 'physical' AND slot_name LIKE 'geodb\\_%' AND wal_status IS DISTINCT FROM 'lost' ORDER BY 1)";

/// Run the probe query on `client`.
pub async fn sample(client: &tokio_postgres::Client) -> Result<Sample, PgError> {
    let row = bounded("probe query", TIMEOUT, client.query_one(probe_sql(), &[])).await?;
    let text = |i: usize| row.try_get::<_, Option<String>>(i).ok().flatten();
    Ok(Sample {
        in_recovery: row.try_get(0).map_err(|e| PgError::query(&e))?,
        lsn: text(1).as_deref().and_then(lsn::parse),
        replayed_lsn: text(2).as_deref().and_then(lsn::parse),
        replay_paused: row.try_get(3).unwrap_or(false),
        receiving: row.try_get(4).unwrap_or(false),
        last_message_age: row.try_get(5).ok().flatten(),
        replay_age: row.try_get(6).ok().flatten(),
        timeline: row.try_get(7).ok().flatten(),
        slots: row.try_get(8).unwrap_or_default(),
        kept_data: row.try_get(9).unwrap_or_default(),
        config_errors: row.try_get(10).unwrap_or_default(),
        archiver: Archiver {
            last_archived_wal: text(11),
            archived_age: row.try_get(12).ok().flatten(),
            last_failed_wal: text(13),
            failed_age: row.try_get(14).ok().flatten(),
            failed_count: row.try_get(15).unwrap_or_default(),
            waiting: row.try_get(16).unwrap_or_default(),
            last_error: text(17)
                .map(|e| e.trim().to_owned())
                .filter(|e| !e.is_empty()),
        },
    })
}

/// A kept probe connection and the address it goes to.
pub type Connection = (String, tokio_postgres::Client);

/// Probe one instance, reusing `kept` when it still points at `address`. The connection
/// is handed back for the next probe unless the query failed.
pub async fn probe(
    kept: Option<Connection>,
    instance: &str,
    address: String,
    login: Option<Login>,
) -> (Option<Connection>, Result<Sample, PgError>) {
    let client = match (kept, login) {
        (Some((kept_address, client)), _) if kept_address == address && !client.is_closed() => {
            client
        }
        (_, None) => return (None, Err(PgError::Connect("no CA issued yet".into()))),
        (_, Some(login)) => match connect(instance, &address, &login).await {
            Ok(client) => client,
            Err(error) => return (None, Err(error)),
        },
    };
    match sample(&client).await {
        Ok(sample) => (Some((address, client)), Ok(sample)),
        // A failed query drops the connection: the next probe starts afresh.
        Err(error) => (None, Err(error)),
    }
}

/// What the operator knows of one instance's PostgreSQL.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InstanceHealth {
    /// Pod IP probed; empty when the instance has no running pod.
    pub address: String,
    /// The last successful probe (kept while the instance fails, for its last LSN).
    pub sample: Option<Sample>,
    pub reachable: bool,
    /// Nothing listens (connection refused, or no pod): PostgreSQL is not running there,
    /// as opposed to a timeout, where it may be running behind a broken network.
    pub refused: bool,
    /// When the current run of failed probes began.
    pub failing_since: Option<std::time::Instant>,
    pub error: Option<String>,
}

impl InstanceHealth {
    pub fn failing_for(&self, now: std::time::Instant) -> std::time::Duration {
        self.failing_since
            .map(|since| now.saturating_duration_since(since))
            .unwrap_or_default()
    }

    /// Record the outcome of one probe made at `now`.
    pub fn record(&mut self, result: Result<Sample, PgError>, now: std::time::Instant) {
        match result {
            Ok(sample) => {
                self.sample = Some(sample);
                self.reachable = true;
                self.refused = false;
                self.failing_since = None;
                self.error = None;
            }
            Err(error) => {
                self.reachable = false;
                self.refused = error.is_refusal();
                self.failing_since.get_or_insert(now);
                self.error = Some(error.to_string());
            }
        }
    }
}

/// What the operator knows of every instance of one GeoDatabase.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterHealth {
    pub instances: std::collections::BTreeMap<String, InstanceHealth>,
}

impl ClusterHealth {
    pub fn get(&self, instance: &str) -> Option<&InstanceHealth> {
        self.instances.get(instance)
    }

    /// The last sample of a reachable instance.
    pub fn sample(&self, instance: &str) -> Option<&Sample> {
        self.get(instance)
            .filter(|h| h.reachable)
            .and_then(|h| h.sample.as_ref())
    }

    /// The pod IP last probed for `instance` (empty when unknown).
    pub fn address(&self, instance: &str) -> &str {
        self.get(instance).map_or("", |h| h.address.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_lists_kept_directories_of_the_data_volume() {
        let sql = probe_sql();
        assert!(sql.starts_with("SELECT pg_is_in_recovery()"));
        assert!(
            sql.contains("ARRAY(SELECT f FROM pg_ls_dir('/var/lib/postgresql/data', true, false) f WHERE f LIKE 'pgdata.kept-%' ORDER BY 1), ARRAY(SELECT CASE"),
            "{sql}"
        );
    }
}
