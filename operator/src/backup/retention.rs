//! Which backups and WAL to delete, and deleting them. The plan is pure; applying it
//! removes manifests first, so an interrupted apply leaves data that is no longer
//! counted, never a manifest whose data is gone.

use std::time::SystemTime;

use futures::stream::{self, StreamExt as _, TryStreamExt as _};
use serde::Serialize;

use crate::archive::config::ArchiveConfig;
use crate::archive::segment::WalFile;
use crate::archive::store::Store;

use super::catalog::Catalog;
pub use super::config::Retention;
use super::error::Result;
use super::manifest::{self, Manifest};
use super::time;

/// Deletions at once.
const PARALLEL: usize = 4;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub delete_backups: Vec<String>,
    pub delete_incomplete: Vec<String>,
    /// Object keys.
    pub delete_wal: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.delete_backups.is_empty()
            && self.delete_incomplete.is_empty()
            && self.delete_wal.is_empty()
    }
}

/// Keep the newest backup always, the newest `count`, and every backup finished inside
/// `[now - window, now]` with the newest one finished before it (from which the
/// window's start is reachable); the union when both are set. Delete the other
/// backups, WAL before the oldest kept backup's start (history files stay: they are
/// small and any timeline switch may need them), and incomplete backups older than it
/// (a newer one may still be running).
pub fn plan(catalog: &Catalog, retention: &Retention, now: SystemTime) -> Plan {
    if !retention.is_set() || catalog.backups.is_empty() {
        return Plan::default();
    }
    let mut backups: Vec<&Manifest> = catalog.backups.iter().collect();
    backups.sort_by(|a, b| manifest::id_order(&a.id).cmp(&manifest::id_order(&b.id)));
    let keep = kept(&backups, retention, time::secs_of(now));
    let Some(oldest) = backups
        .iter()
        .zip(&keep)
        .find(|(_, k)| **k)
        .map(|(b, _)| *b)
    else {
        return Plan::default();
    };
    let delete_backups = backups
        .iter()
        .zip(&keep)
        .filter(|(_, k)| !**k)
        .map(|(b, _)| b.id.clone())
        .collect();
    let delete_incomplete = catalog
        .incomplete
        .iter()
        .filter(|id| manifest::id_order(id) < manifest::id_order(&oldest.id))
        .cloned()
        .collect();
    // Without a readable start segment nothing is known to be unneeded.
    let delete_wal = match oldest.start_segment() {
        None => Vec::new(),
        Some(start) => catalog
            .wal
            .iter()
            .filter(|w| {
                let position = match WalFile::parse(&w.name) {
                    Some(WalFile::Segment(id) | WalFile::Partial(id) | WalFile::Backup(id, _)) => {
                        (id.log, id.seg)
                    }
                    Some(WalFile::History(_)) | None => return false,
                };
                position < (start.log, start.seg)
            })
            .map(|w| w.key.clone())
            .collect(),
    };
    Plan {
        delete_backups,
        delete_incomplete,
        delete_wal,
    }
}

/// Which of `backups` (oldest first) to keep.
fn kept(backups: &[&Manifest], retention: &Retention, now: i64) -> Vec<bool> {
    let n = backups.len();
    // A backup whose end cannot be read is never judged old.
    let mut keep: Vec<bool> = backups
        .iter()
        .map(|b| b.finished_secs().is_none())
        .collect();
    if let Some(last) = keep.last_mut() {
        *last = true;
    }
    if let Some(count) = retention.count {
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        keep.iter_mut()
            .skip(n.saturating_sub(count))
            .for_each(|k| *k = true);
    }
    if let Some(window) = retention.window {
        let start = now.saturating_sub(i64::try_from(window.as_secs()).unwrap_or(i64::MAX));
        let finished: Vec<Option<i64>> = backups.iter().map(|b| b.finished_secs()).collect();
        for (k, f) in keep.iter_mut().zip(&finished) {
            if f.is_some_and(|f| f >= start) {
                *k = true;
            }
        }
        if let Some(i) = finished.iter().rposition(|f| f.is_some_and(|f| f < start)) {
            keep[i] = true;
        }
    }
    keep
}

/// Manifests first, then the backups' data (and incomplete backups), then WAL.
pub async fn apply(config: &ArchiveConfig, plan: &Plan) -> Result<()> {
    let store = Store::new(config)?;
    let prefix = &config.prefix;
    delete_all(
        &store,
        plan.delete_backups
            .iter()
            .map(|id| (id.as_str(), manifest::manifest_key(prefix, id))),
    )
    .await?;
    for id in plan.delete_backups.iter().chain(&plan.delete_incomplete) {
        let listed = store.list(id, &manifest::backup_dir(prefix, id)).await?;
        delete_all(&store, listed.into_iter().map(|o| (id.as_str(), o.key))).await?;
    }
    delete_all(
        &store,
        plan.delete_wal.iter().map(|key| ("retention", key.clone())),
    )
    .await
}

async fn delete_all<'a>(
    store: &Store,
    keys: impl Iterator<Item = (&'a str, String)>,
) -> Result<()> {
    stream::iter(keys)
        .map(|(name, key)| async move { store.delete(name, &key).await })
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::catalog::WalObject;
    use crate::backup::manifest::sample;
    use std::time::{Duration, UNIX_EPOCH};

    const HOUR: i64 = 3600;
    /// 2026-12-10T00:00:00Z.
    const NOW: i64 = 1_796_860_800;

    fn at(secs: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap())
    }

    fn backup(id: &str, hours_ago: i64, start_wal: &str) -> Manifest {
        Manifest {
            id: id.into(),
            finished_at: time::format_rfc3339(NOW - hours_ago * HOUR),
            start_wal: start_wal.into(),
            ..sample()
        }
    }

    fn wal(name: &str) -> WalObject {
        WalObject {
            name: name.into(),
            key: format!("p/wal/{name}.zst"),
            size: 1,
            last_modified: String::new(),
        }
    }

    /// Four daily backups, the last two on timeline 2; WAL of both timelines.
    fn catalog() -> Catalog {
        Catalog {
            dumps: vec![],
            backups: vec![
                backup("20261206T000000Z", 96, "000000010000000000000002"),
                backup("20261207T000000Z", 72, "000000010000000000000010"),
                backup("20261208T000000Z", 48, "000000020000000000000020"),
                backup("20261209T000000Z", 24, "000000020000000100000001"),
            ],
            incomplete: vec!["20261201T000000Z".into(), "20261209T120000Z".into()],
            wal: [
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000002.00000028.backup",
                "00000001000000000000000F",
                "000000010000000000000010",
                "000000010000000000000021.partial",
                "00000002.history",
                "000000020000000000000021",
                "0000000200000000000000FF",
                "000000020000000100000001",
            ]
            .map(wal)
            .into(),
        }
    }

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| format!("p/wal/{n}.zst")).collect()
    }

    #[test]
    fn nothing_without_a_policy_or_backups() {
        assert!(plan(&catalog(), &Retention::default(), at(NOW)).is_empty());
        let empty = Catalog {
            backups: vec![],
            ..catalog()
        };
        let r = Retention {
            count: Some(1),
            window: None,
        };
        assert!(plan(&empty, &r, at(NOW)).is_empty());
    }

    #[test]
    fn count_keeps_the_newest_and_wal_from_the_oldest_kept_start() {
        let r = Retention {
            count: Some(2),
            window: None,
        };
        let p = plan(&catalog(), &r, at(NOW));
        assert_eq!(p.delete_backups, ["20261206T000000Z", "20261207T000000Z"]);
        assert_eq!(p.delete_incomplete, ["20261201T000000Z"]);
        // Before 0/20 on any timeline, history kept; the timeline-1 partial at 0/21 kept.
        assert_eq!(
            p.delete_wal,
            keys(&[
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000002.00000028.backup",
                "00000001000000000000000F",
                "000000010000000000000010",
            ])
        );
        let one = Retention {
            count: Some(1),
            window: None,
        };
        let p = plan(&catalog(), &one, at(NOW));
        assert_eq!(p.delete_backups.len(), 3);
        assert!(p
            .delete_wal
            .contains(&keys(&["0000000200000000000000FF"])[0]));
        assert!(!p.delete_wal.iter().any(|k| k.contains("history")));
        assert_eq!(p.delete_incomplete, ["20261201T000000Z"]);
    }

    #[test]
    fn window_keeps_the_backup_before_its_start() {
        // 36 hours: only the newest finished inside; the one 48 hours ago covers the start.
        let r = Retention {
            window: Some(Duration::from_secs(36 * 3600)),
            count: None,
        };
        let p = plan(&catalog(), &r, at(NOW));
        assert_eq!(p.delete_backups, ["20261206T000000Z", "20261207T000000Z"]);
        // A window reaching past every backup keeps them all, and the WAL from the
        // oldest one's start.
        let r = Retention {
            window: Some(Duration::from_secs(30 * 86_400)),
            count: None,
        };
        let p = plan(&catalog(), &r, at(NOW));
        assert!(p.delete_backups.is_empty());
        assert_eq!(p.delete_wal, keys(&["000000010000000000000001"]));
        let r = Retention {
            window: Some(Duration::from_secs(71 * 3600)),
            count: None,
        };
        let p = plan(&catalog(), &r, at(NOW));
        assert_eq!(p.delete_backups, ["20261206T000000Z"]);
        // One finished exactly at the window's start does not reach it (a time target
        // needs a backup finished strictly before), so the one before it stays too.
        let r = Retention {
            window: Some(Duration::from_secs(72 * 3600)),
            count: None,
        };
        assert!(plan(&catalog(), &r, at(NOW)).delete_backups.is_empty());
    }

    #[test]
    fn both_keep_the_union() {
        let r = Retention {
            window: Some(Duration::from_secs(3600)),
            count: Some(3),
        };
        let p = plan(&catalog(), &r, at(NOW));
        assert_eq!(p.delete_backups, ["20261206T000000Z"]);
        let r = Retention {
            window: Some(Duration::from_secs(60 * 3600)),
            count: Some(1),
        };
        let p = plan(&catalog(), &r, at(NOW));
        assert_eq!(p.delete_backups, ["20261206T000000Z"]);
    }

    #[test]
    fn an_unreadable_end_is_never_deleted() {
        let mut c = catalog();
        c.backups[0].finished_at = "garbage".into();
        let r = Retention {
            count: Some(1),
            window: None,
        };
        let p = plan(&c, &r, at(NOW));
        assert_eq!(p.delete_backups, ["20261207T000000Z", "20261208T000000Z"]);
        // The oldest kept is the first now: its start bounds the WAL.
        assert_eq!(p.delete_wal, keys(&["000000010000000000000001"]));
        assert!(p.delete_incomplete.len() == 1);
    }
}
