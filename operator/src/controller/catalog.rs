//! The backup catalogs the operator reads: its own archive's (for `status.backups`) and a
//! recovery source's (to refuse a target outside its range before anything is made).
//! A read lists the bucket, so it is kept for a while per archive and made again when
//! that time is up or a backup Job finished since.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::read::Observed;
use super::status::conditions::now;
use super::Context;
use crate::api::{BackupsStatus, GeoDatabase, ObjectStoreSpec};
use crate::archive::config::{ArchiveConfig, DEFAULT_RETRY_TIMEOUT};
use crate::archive::segment::Compression;
use crate::archive::store::{Inline, Store};
use crate::backup::catalog::{self, Catalog};
use crate::backup::select::{select, Target};
use crate::runtime::metrics::ClusterLabels;

/// How long one read of a bucket stands.
const FRESH: Duration = Duration::from_secs(30);
/// A read that fails gives up sooner than an archive command: the reconcile waits on it.
const READ_RETRY: Duration = Duration::from_secs(5);

struct Entry {
    read_at: Instant,
    /// What the reads depended on (the finished backup Jobs): a change reads again.
    stamp: String,
    result: Result<Catalog, String>,
}

/// Reads of the buckets, by archive (endpoint, bucket, path).
#[derive(Default)]
pub struct Catalogs {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    /// Archives being read in the background now.
    reading: Arc<Mutex<HashSet<String>>>,
}

/// One archive to read: where, and its access key (from the Secrets, never logged).
pub struct Archive {
    pub config: ArchiveConfig,
    pub inline: Inline,
}

/// One read of `archive`'s bucket.
async fn read_bucket(archive: &Archive) -> Result<Catalog, String> {
    match Store::with_inline(&archive.config, &archive.inline) {
        Ok(store) => catalog::read_from(&store, &archive.config)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

impl Catalogs {
    fn store(&self, key: String, stamp: &str, result: Result<Catalog, String>) {
        if let Ok(mut entries) = self.entries.lock() {
            let entry = Entry {
                read_at: Instant::now(),
                stamp: stamp.to_owned(),
                result,
            };
            entries.insert(key, entry);
        }
    }

    /// The last read and whether it still stands.
    fn last(&self, key: &str, stamp: &str) -> Option<(Result<Catalog, String>, bool)> {
        let entries = self.entries.lock().ok()?;
        let e = entries.get(key)?;
        Some((
            e.result.clone(),
            e.read_at.elapsed() < FRESH && e.stamp == stamp,
        ))
    }

    /// The catalog of `archive` now: from the last read while it stands, else read
    /// (waiting for it). For decisions that must not act on an old answer.
    pub async fn read(&self, archive: &Archive, stamp: &str) -> Result<Catalog, String> {
        let key = archive.config.origin();
        if let Some((result, true)) = self.last(&key, stamp) {
            return result;
        }
        let result = read_bucket(archive).await;
        self.store(key, stamp, result.clone());
        result
    }

    /// The last read of `archive` without waiting (`None` before the first); a read in
    /// the background replaces it once it no longer stands. A slow or unreachable
    /// bucket never slows a reconcile (and so never a failover).
    pub fn latest(
        &self,
        archive: Archive,
        stamp: &str,
        when_read: impl FnOnce() + Send + 'static,
    ) -> Option<Result<Catalog, String>> {
        let key = archive.config.origin();
        let last = self.last(&key, stamp);
        if last.as_ref().is_some_and(|(_, fresh)| *fresh) {
            return last.map(|(result, _)| result);
        }
        let started = self
            .reading
            .lock()
            .map(|mut reading| reading.insert(key.clone()))
            .unwrap_or(false);
        if started {
            let (entries, reading, stamp) =
                (self.entries.clone(), self.reading.clone(), stamp.to_owned());
            tokio::spawn(async move {
                let result = read_bucket(&archive).await;
                let catalogs = Catalogs { entries, reading };
                catalogs.store(key.clone(), &stamp, result);
                let done = catalogs.reading.lock().map(|mut r| r.remove(&key));
                drop(done);
                when_read();
            });
        }
        last.map(|(result, _)| result)
    }
}

fn secret_value(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| v.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|v| v.clone().into_bytes())
        })
}

/// The archive `store` names at `path`, with its key from the namespace's Secrets.
pub async fn archive(
    client: &kube::Client,
    namespace: &str,
    store: &ObjectStoreSpec,
    path: String,
) -> Result<Archive, String> {
    let api = Api::<Secret>::namespaced(client.clone(), namespace);
    let get = |name: String, key: String| {
        let api = api.clone();
        async move {
            let secret = api
                .get_opt(&name)
                .await
                .map_err(|e| format!("reading the Secret {name:?}: {e}"))?
                .ok_or_else(|| format!("the Secret {name:?} does not exist"))?;
            secret_value(&secret, &key)
                .ok_or_else(|| format!("the Secret {name:?} has no key {key:?}"))
        }
    };
    let c = &store.credentials;
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).trim().to_owned();
    let access_key_id = text(get(c.secret_name.clone(), c.access_key_id_key.clone()).await?);
    let secret_access_key =
        text(get(c.secret_name.clone(), c.secret_access_key_key.clone()).await?);
    let ca = match &store.ca {
        Some(ca) => Some(get(ca.secret_name.clone(), ca.key.clone()).await?),
        None => None,
    };
    Ok(Archive {
        config: ArchiveConfig {
            endpoint: store.endpoint.trim_end_matches('/').to_owned(),
            bucket: store.bucket.clone(),
            prefix: path,
            region: store.region.clone(),
            path_style: store.path_style,
            // Unused: the key comes inline.
            access_key_id_file: PathBuf::new(),
            secret_access_key_file: PathBuf::new(),
            ca_file: None,
            compression: Compression::Zstd,
            spool_dir: PathBuf::new(),
            retry_timeout: READ_RETRY.min(DEFAULT_RETRY_TIMEOUT),
        },
        inline: Inline {
            access_key_id,
            secret_access_key,
            ca_pem: ca,
        },
    })
}

fn record_metrics(ctx: &Context, namespace: &str, cluster: &str, catalog: &Catalog) {
    let labels = ClusterLabels {
        namespace: namespace.to_owned(),
        cluster: cluster.to_owned(),
    };
    let m = &ctx.metrics;
    let count = i64::try_from(catalog.backups.len()).unwrap_or(i64::MAX);
    m.backups.get_or_create(&labels).set(count);
    let stored: u64 = catalog.backups.iter().map(|b| b.stored_bytes).sum();
    m.backup_stored_bytes
        .get_or_create(&labels)
        .set(i64::try_from(stored).unwrap_or(i64::MAX));
    if let Some(finished) = catalog.backups.last().and_then(|b| b.finished_secs()) {
        m.backup_last_completion_timestamp_seconds
            .get_or_create(&labels)
            .set(finished);
    }
    if let Some(finished) = catalog.dumps.last().and_then(|d| d.finished_secs()) {
        m.dump_last_completion_timestamp_seconds
            .get_or_create(&labels)
            .set(finished);
    }
}

/// `status.backups` from a catalog (pure).
pub fn summary(catalog: &Catalog, read_at: &str) -> BackupsStatus {
    let range = catalog.recoverable_range();
    let last = catalog.backups.last();
    BackupsStatus {
        count: i32::try_from(catalog.backups.len()).unwrap_or(i32::MAX),
        last_backup: last.map(|b| b.id.clone()),
        last_backup_time: last.map(|b| b.finished_at.clone()),
        first_recoverability_point: range.as_ref().map(|r| r.0.clone()),
        last_archived_time: range.map(|r| r.1),
        size_bytes: i64::try_from(catalog.backups.iter().map(|b| b.stored_bytes).sum::<u64>())
            .unwrap_or(i64::MAX),
        dumps: (!catalog.dumps.is_empty())
            .then(|| i32::try_from(catalog.dumps.len()).unwrap_or(i32::MAX)),
        last_dump: catalog.dumps.last().map(|d| d.id.clone()),
        last_dump_time: catalog.dumps.last().map(|d| d.finished_at.clone()),
        read_at: Some(read_at.to_owned()),
        error: None,
    }
}

/// Whether a recovery can start at `target` from `catalog`: the refusal names the field
/// and the recoverable range.
pub fn check_target(catalog: &Catalog, target: &Target) -> Result<(), String> {
    select(catalog, target)
        .map(|_| ())
        .map_err(|e| format!("bootstrap.recovery.target: {e}"))
}

/// What the catalog reads depend on: the backup Jobs that finished.
fn stamp(observed: &Observed) -> String {
    let jobs = observed.owned.jobs.iter().map(|j| {
        let done = j.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0);
        format!("{}={done}", j.name_any())
    });
    let crons = observed.owned.cron_jobs.iter().map(|c| {
        let last = c
            .status
            .as_ref()
            .and_then(|s| s.last_successful_time.as_ref())
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        format!("{}={last}", c.name_any())
    });
    jobs.chain(crons).collect::<Vec<_>>().join(",")
}

/// `status.backups` with `spec.backup`: the bucket as last read; on a failed read the
/// figures before, with the error.
pub async fn backups_status(
    ctx: &Context,
    db: &GeoDatabase,
    observed: &Observed,
) -> Option<BackupsStatus> {
    let backup = db.spec.backup.as_ref()?;
    let namespace = db.namespace()?;
    let store = &backup.object_store;
    let path = store.path_for(&namespace, &db.name_any());
    let before = db.status.as_ref().and_then(|s| s.backups.clone());
    let read = match archive(&ctx.client, &namespace, store, path).await {
        Ok(archive) => {
            let waker = ctx
                .monitor
                .waker(kube::runtime::reflector::ObjectRef::from_obj(db));
            ctx.catalogs.latest(archive, &stamp(observed), waker)
        }
        Err(e) => Some(Err(e)),
    };
    Some(match read {
        // Not read yet: what the status said.
        None => before.unwrap_or_default(),
        Some(Ok(catalog)) => {
            record_metrics(ctx, &namespace, &db.name_any(), &catalog);
            summary(&catalog, &now().0.to_string())
        }
        Some(Err(error)) => BackupsStatus {
            error: Some(error),
            ..before.unwrap_or_default()
        },
    })
}

/// Why a recovery cannot start (a target outside the source's range, an archive that
/// cannot be read); checked only before the cluster's first primary runs.
pub async fn recovery_refusal(
    ctx: &Context,
    db: &GeoDatabase,
    observed: &Observed,
) -> Option<String> {
    let recovery = db.spec.bootstrap.as_ref()?.recovery.as_ref()?;
    let started = db
        .status
        .as_ref()
        .is_some_and(|s| s.current_primary.is_some())
        || !observed.related.pvcs.is_empty();
    if started {
        return None;
    }
    let namespace = db.namespace()?;
    let source = &recovery.source;
    let path = source.path_for(&namespace, &db.name_any());
    let read = match archive(&ctx.client, &namespace, source, path.clone()).await {
        Ok(archive) => ctx.catalogs.read(&archive, "").await,
        Err(e) => Err(e),
    };
    match read {
        Ok(catalog) => check_target(&catalog, &recovery.target.catalog_target()).err(),
        Err(e) => Some(format!(
            "bootstrap.recovery.source: the archive at {path:?} in bucket {:?} cannot be read: {e}",
            source.bucket
        )),
    }
}
