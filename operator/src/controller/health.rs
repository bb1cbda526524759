//! Health and replication of every instance, measured by the operator.
//!
//! One task per GeoDatabase probes each instance's PostgreSQL every `PROBE_INTERVAL`
//! over a connection it keeps open (reconnecting only when it breaks or the pod moves),
//! with every connect and query bounded by `PROBE_TIMEOUT`. Reconciles read the latest
//! snapshot; they never probe. A change that matters to a decision (reachability, role,
//! streaming, serving reads, timeline, slots) triggers a reconcile at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::{mpsc, watch};
use tokio_postgres::NoTls;
use tracing::debug;

use crate::api::GeoDatabase;
use crate::metrics::{InstanceLabels, Metrics};
use crate::names::{POSTGRES_PORT, SUPERUSER};

pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(900);

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
    /// Primary: physical replication slots the operator manages.
    pub slots: Vec<String>,
}

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
    pub failing_since: Option<Instant>,
    pub error: Option<String>,
}

impl InstanceHealth {
    pub fn failing_for(&self, now: Instant) -> Duration {
        self.failing_since
            .map(|since| now.saturating_duration_since(since))
            .unwrap_or_default()
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterHealth {
    pub instances: BTreeMap<String, InstanceHealth>,
}

impl ClusterHealth {
    pub fn get(&self, instance: &str) -> Option<&InstanceHealth> {
        self.instances.get(instance)
    }

    pub fn sample(&self, instance: &str) -> Option<&Sample> {
        self.get(instance)
            .filter(|h| h.reachable)
            .and_then(|h| h.sample.as_ref())
    }
}

/// What to probe.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Targets {
    pub namespace: String,
    pub cluster: String,
    /// Instance name -> pod IP (empty when it has none).
    pub instances: BTreeMap<String, String>,
    pub primary: String,
    pub max_lag_bytes: i64,
    pub superuser_password: String,
}

/// WAL bytes a replica has yet to replay, against the primary's position.
pub fn lag_bytes(primary: Option<&Sample>, replica: &Sample) -> Option<i64> {
    let primary_lsn = primary.filter(|p| !p.in_recovery)?.lsn?;
    let replayed = replica.replayed_lsn.or(replica.lsn)?;
    Some(i64::try_from(primary_lsn.saturating_sub(replayed)).unwrap_or(i64::MAX))
}

/// A replica serves reads while it streams and is within `max_lag_bytes`.
pub fn serves_reads(primary: Option<&Sample>, replica: &Sample, max_lag_bytes: i64) -> bool {
    replica.in_recovery
        && replica.receiving
        && lag_bytes(primary, replica).is_none_or(|lag| lag <= max_lag_bytes)
}

/// `16/B374D848` -> byte position.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

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
    ARRAY(SELECT slot_name::text FROM pg_replication_slots WHERE slot_type = 'physical' AND slot_name LIKE 'geodb\\_%' ORDER BY 1)";

/// A superuser connection to one instance, bounded by `PROBE_TIMEOUT`.
pub async fn connect(address: &str, password: &str) -> Result<tokio_postgres::Client, String> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(address)
        .port(POSTGRES_PORT as u16)
        .user(SUPERUSER)
        .password(password)
        .dbname("postgres")
        .application_name("geodb-operator")
        .connect_timeout(PROBE_TIMEOUT);
    let connecting = config.connect(NoTls);
    match tokio::time::timeout(PROBE_TIMEOUT, connecting).await {
        Ok(Ok((client, connection))) => {
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    debug!(%error, "probe connection closed");
                }
            });
            Ok(client)
        }
        Ok(Err(error)) => Err(describe(&error)),
        Err(_) => Err("connect timed out".to_owned()),
    }
}

fn describe(error: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    match error.source() {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}

fn is_refusal(message: &str) -> bool {
    message.contains("Connection refused") || message.contains("the database system is")
}

async fn sample(client: &tokio_postgres::Client) -> Result<Sample, String> {
    let row = match tokio::time::timeout(PROBE_TIMEOUT, client.query_one(PROBE_SQL, &[])).await {
        Ok(Ok(row)) => row,
        Ok(Err(error)) => return Err(describe(&error)),
        Err(_) => return Err("probe query timed out".to_owned()),
    };
    let text = |i: usize| row.try_get::<_, Option<String>>(i).ok().flatten();
    Ok(Sample {
        in_recovery: row.try_get(0).map_err(|e| e.to_string())?,
        lsn: text(1).as_deref().and_then(parse_lsn),
        replayed_lsn: text(2).as_deref().and_then(parse_lsn),
        replay_paused: row.try_get(3).unwrap_or(false),
        receiving: row.try_get(4).unwrap_or(false),
        last_message_age: row.try_get(5).ok().flatten(),
        replay_age: row.try_get(6).ok().flatten(),
        timeline: row.try_get(7).ok().flatten(),
        slots: row.try_get(8).unwrap_or_default(),
    })
}

type Connection = (String, tokio_postgres::Client);

/// Probe one instance, reusing `kept` when it still points at `address`.
async fn probe(
    kept: Option<Connection>,
    address: String,
    password: String,
) -> (Option<Connection>, Result<Sample, String>) {
    if address.is_empty() {
        return (None, Err("no running pod".to_owned()));
    }
    let client = match kept {
        Some((kept_address, client)) if kept_address == address && !client.is_closed() => client,
        _ => match connect(&address, &password).await {
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

/// The part of an instance's health a reconcile must react to.
#[derive(Debug, PartialEq)]
struct Digest {
    instance: String,
    reachable: bool,
    in_recovery: bool,
    receiving: bool,
    serving_reads: bool,
    timeline: Option<i64>,
    slots: usize,
}

/// What a reconcile must react to; lag figures change all the time and are left out.
fn digest(health: &ClusterHealth, targets: &Targets) -> Vec<Digest> {
    let primary = health.sample(&targets.primary);
    health
        .instances
        .iter()
        .map(|(name, h)| {
            let sample = h.sample.as_ref().filter(|_| h.reachable);
            Digest {
                instance: name.clone(),
                reachable: h.reachable,
                in_recovery: sample.is_some_and(|s| s.in_recovery),
                receiving: sample.is_some_and(|s| s.receiving),
                serving_reads: sample
                    .is_some_and(|s| serves_reads(primary, s, targets.max_lag_bytes)),
                timeline: sample.and_then(|s| s.timeline),
                slots: sample.map(|s| s.slots.len()).unwrap_or(0),
            }
        })
        .collect()
}

struct Tracked {
    targets: watch::Sender<Targets>,
    health: Arc<Mutex<ClusterHealth>>,
    task: tokio::task::AbortHandle,
}

/// The probes of every GeoDatabase this operator reconciles.
pub struct Monitor {
    clusters: Mutex<HashMap<ObjectRef<GeoDatabase>, Tracked>>,
    trigger: mpsc::UnboundedSender<ObjectRef<GeoDatabase>>,
    metrics: Arc<Metrics>,
}

impl Monitor {
    /// The monitor and the stream of GeoDatabases it wants reconciled.
    pub fn new(metrics: Arc<Metrics>) -> (Self, mpsc::UnboundedReceiver<ObjectRef<GeoDatabase>>) {
        let (trigger, triggered) = mpsc::unbounded_channel();
        (
            Self {
                clusters: Mutex::new(HashMap::new()),
                trigger,
                metrics,
            },
            triggered,
        )
    }

    /// Start (or update) the probes of a GeoDatabase.
    pub fn track(&self, key: ObjectRef<GeoDatabase>, targets: Targets) {
        let Ok(mut clusters) = self.clusters.lock() else {
            return;
        };
        if let Some(tracked) = clusters.get(&key) {
            tracked.targets.send_if_modified(|current| {
                let changed = *current != targets;
                *current = targets;
                changed
            });
            return;
        }
        let (sender, receiver) = watch::channel(targets);
        let health = Arc::new(Mutex::new(ClusterHealth::default()));
        let task = tokio::spawn(probe_loop(
            key.clone(),
            receiver,
            health.clone(),
            self.trigger.clone(),
            self.metrics.clone(),
        ))
        .abort_handle();
        clusters.insert(
            key,
            Tracked {
                targets: sender,
                health,
                task,
            },
        );
    }

    pub fn health(&self, key: &ObjectRef<GeoDatabase>) -> ClusterHealth {
        self.clusters
            .lock()
            .ok()
            .and_then(|clusters| {
                clusters
                    .get(key)
                    .and_then(|t| t.health.lock().ok().map(|h| h.clone()))
            })
            .unwrap_or_default()
    }

    /// Stop probing a GeoDatabase that is gone.
    pub fn forget(&self, key: &ObjectRef<GeoDatabase>) {
        let removed = self.clusters.lock().ok().and_then(|mut c| c.remove(key));
        if let Some(tracked) = removed {
            tracked.task.abort();
            let targets = tracked.targets.borrow().clone();
            for instance in targets.instances.keys() {
                self.metrics.forget_instance(&InstanceLabels {
                    namespace: targets.namespace.clone(),
                    cluster: targets.cluster.clone(),
                    instance: instance.clone(),
                });
            }
        }
    }
}

fn record_metrics(metrics: &Metrics, targets: &Targets, health: &ClusterHealth) {
    let primary = health.sample(&targets.primary);
    for (name, h) in &health.instances {
        let labels = InstanceLabels {
            namespace: targets.namespace.clone(),
            cluster: targets.cluster.clone(),
            instance: name.clone(),
        };
        let sample = h.sample.as_ref().filter(|_| h.reachable);
        metrics
            .instance_up
            .get_or_create(&labels)
            .set(i64::from(h.reachable));
        metrics
            .instance_is_primary
            .get_or_create(&labels)
            .set(i64::from(sample.is_some_and(|s| !s.in_recovery)));
        if let Some(timeline) = sample.and_then(|s| s.timeline) {
            metrics
                .instance_timeline
                .get_or_create(&labels)
                .set(timeline);
        }
        if let Some(s) = sample.filter(|s| s.in_recovery) {
            if let Some(lag) = lag_bytes(primary, s) {
                metrics.replica_lag_bytes.get_or_create(&labels).set(lag);
            }
            let pending = lag_bytes(primary, s).unwrap_or(0) > 0;
            let seconds = if pending {
                s.replay_age.unwrap_or(0.0)
            } else {
                0.0
            };
            metrics
                .replica_lag_seconds
                .get_or_create(&labels)
                .set(seconds);
        }
    }
}

async fn probe_loop(
    key: ObjectRef<GeoDatabase>,
    mut targets: watch::Receiver<Targets>,
    health: Arc<Mutex<ClusterHealth>>,
    trigger: mpsc::UnboundedSender<ObjectRef<GeoDatabase>>,
    metrics: Arc<Metrics>,
) {
    let mut connections: HashMap<String, Connection> = HashMap::new();
    let mut interval = tokio::time::interval(PROBE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_digest = None;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            // New targets (a pod moved, an instance was added): probe at once.
            changed = targets.changed() => if changed.is_err() { return; },
        }
        let current = targets.borrow_and_update().clone();
        connections.retain(|name, _| current.instances.contains_key(name));
        let probes = current.instances.iter().map(|(name, address)| {
            let kept = connections.remove(name);
            let (name, address, password) = (
                name.clone(),
                address.clone(),
                current.superuser_password.clone(),
            );
            async move { (name, probe(kept, address, password).await) }
        });
        let results = join_all(probes).await;
        let now = Instant::now();
        let snapshot = {
            let Ok(mut health) = health.lock() else {
                return;
            };
            health
                .instances
                .retain(|name, _| current.instances.contains_key(name));
            for (name, (connection, result)) in results {
                if let Some(connection) = connection {
                    connections.insert(name.clone(), connection);
                }
                let entry = health.instances.entry(name.clone()).or_default();
                entry.address = current.instances.get(&name).cloned().unwrap_or_default();
                match result {
                    Ok(sample) => {
                        entry.sample = Some(sample);
                        entry.reachable = true;
                        entry.refused = false;
                        entry.failing_since = None;
                        entry.error = None;
                    }
                    Err(error) => {
                        entry.reachable = false;
                        entry.refused = entry.address.is_empty() || is_refusal(&error);
                        entry.failing_since.get_or_insert(now);
                        entry.error = Some(error);
                    }
                }
            }
            health.clone()
        };
        record_metrics(&metrics, &current, &snapshot);
        let digest = digest(&snapshot, &current);
        if last_digest.as_ref() != Some(&digest) {
            last_digest = Some(digest);
            if trigger.send(key.clone()).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trip() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("nonsense"), None);
    }

    fn primary(lsn: u64) -> Sample {
        Sample {
            lsn: Some(lsn),
            ..Sample::default()
        }
    }

    fn replica(received: u64, replayed: u64) -> Sample {
        Sample {
            in_recovery: true,
            receiving: true,
            lsn: Some(received),
            replayed_lsn: Some(replayed),
            ..Sample::default()
        }
    }

    #[test]
    fn lag_is_measured_to_the_replayed_position() {
        let p = primary(10_000);
        assert_eq!(lag_bytes(Some(&p), &replica(10_000, 4_000)), Some(6_000));
        assert_eq!(lag_bytes(Some(&p), &replica(12_000, 12_000)), Some(0));
        assert_eq!(lag_bytes(None, &replica(1, 1)), None);
    }

    #[test]
    fn lagging_or_disconnected_replicas_do_not_serve_reads() {
        let p = primary(10_000);
        assert!(serves_reads(Some(&p), &replica(10_000, 9_000), 1_000));
        assert!(!serves_reads(Some(&p), &replica(10_000, 8_000), 1_000));
        let disconnected = Sample {
            receiving: false,
            ..replica(10_000, 10_000)
        };
        assert!(!serves_reads(Some(&p), &disconnected, 1_000));
        // Without a primary to compare with, a streaming replica keeps serving.
        assert!(serves_reads(None, &replica(5, 5), 0));
        assert!(!serves_reads(Some(&p), &p, 1_000));
    }

    #[test]
    fn refusals_are_told_from_timeouts() {
        assert!(is_refusal(
            "error connecting to server: Connection refused (os error 111)"
        ));
        assert!(is_refusal(
            "db error: FATAL: the database system is shutting down"
        ));
        assert!(!is_refusal("connect timed out"));
    }
}
