//! What the bucket holds: backups with a manifest, backups without one (failed, or
//! still running), and the archived WAL.

use futures::stream::{self, StreamExt as _, TryStreamExt as _};
use serde::Serialize;

use crate::archive::config::ArchiveConfig;
use crate::archive::segment::WalFile;
use crate::archive::store::{Listed, Store};

use super::dump::{self, DumpManifest};
use super::error::{BackupError, Result};
use super::manifest::{self, Manifest, MANIFEST_FILE};
use super::time;

/// Manifests read at once.
const PARALLEL: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WalObject {
    /// The WAL file's name, without the compression's suffix.
    pub name: String,
    pub key: String,
    pub size: u64,
    /// RFC 3339, UTC; empty when the server gave none.
    pub last_modified: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Catalog {
    /// Oldest first; only those with a manifest.
    pub backups: Vec<Manifest>,
    /// Ids with data but no manifest, oldest first.
    pub incomplete: Vec<String>,
    /// By name, which is WAL order within a timeline.
    pub wal: Vec<WalObject>,
    /// Complete logical dumps, oldest first.
    pub dumps: Vec<DumpManifest>,
}

impl Catalog {
    /// From the end of the earliest backup to the later of the newest backup's end and
    /// the newest archived WAL; `None` without backups.
    pub fn recoverable_range(&self) -> Option<(String, String)> {
        let start = self
            .backups
            .iter()
            .filter_map(Manifest::finished_secs)
            .min()?;
        let newest_backup = self.backups.last().and_then(Manifest::finished_secs);
        let newest_wal = self
            .wal
            .iter()
            .filter_map(|w| time::parse_rfc3339(&w.last_modified))
            .max();
        let end = newest_backup.max(newest_wal).unwrap_or(start).max(start);
        Some((time::format_rfc3339(start), time::format_rfc3339(end)))
    }

    /// Bytes stored: backups with a manifest and WAL.
    pub fn total_bytes(&self) -> u64 {
        let backups: u64 = self.backups.iter().map(|b| b.stored_bytes).sum();
        backups + self.wal.iter().map(|w| w.size).sum::<u64>()
    }
}

pub async fn read(config: &ArchiveConfig) -> Result<Catalog> {
    let store = Store::new(config)?;
    read_from(&store, config).await
}

pub(crate) async fn read_from(store: &Store, config: &ArchiveConfig) -> Result<Catalog> {
    let backups_prefix = manifest::backups_prefix(&config.prefix);
    let listed = store.list("catalog", &backups_prefix).await?;
    let (with_manifest, incomplete) = manifest::group_ids(&listed, &backups_prefix, MANIFEST_FILE);
    let mut backups: Vec<Manifest> = stream::iter(with_manifest)
        .map(|id| read_manifest(store, config, id))
        .buffered(PARALLEL)
        .try_collect()
        .await?;
    backups.sort_by(|a, b| manifest::id_order(&a.id).cmp(&manifest::id_order(&b.id)));
    let wal_prefix = manifest::wal_prefix(&config.prefix);
    let wal = wal_objects(store.list("catalog", &wal_prefix).await?, &wal_prefix);
    let (dumps, _) = dump::list(store, config).await?;
    Ok(Catalog {
        backups,
        incomplete,
        wal,
        dumps,
    })
}

async fn read_manifest(store: &Store, config: &ArchiveConfig, id: String) -> Result<Manifest> {
    let key = manifest::manifest_key(&config.prefix, &id);
    let bad = |reason: String| BackupError::BadManifest {
        key: key.clone(),
        reason,
    };
    let fetched = store
        .get(&id, &key)
        .await?
        .ok_or_else(|| bad("gone while reading the catalog".to_owned()))?;
    let manifest: Manifest =
        serde_json::from_slice(&fetched.body).map_err(|e| bad(e.to_string()))?;
    if manifest.id != id {
        return Err(bad(format!("it names backup {:?}", manifest.id)));
    }
    Ok(manifest)
}

/// The WAL files among `listed`, by name; other objects are ignored.
pub fn wal_objects(listed: Vec<Listed>, wal_prefix: &str) -> Vec<WalObject> {
    let mut wal: Vec<WalObject> = listed
        .into_iter()
        .filter_map(|object| {
            let file = object.key.strip_prefix(wal_prefix)?;
            let name = file.strip_suffix(".zst").unwrap_or(file);
            WalFile::parse(name)?;
            Some(WalObject {
                name: name.to_owned(),
                last_modified: object
                    .last_modified
                    .map(time::format_rfc3339)
                    .unwrap_or_default(),
                size: object.size,
                key: object.key,
            })
        })
        .collect();
    wal.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.key.cmp(&b.key)));
    wal
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::sample;

    fn listed(key: &str, size: u64, last_modified: Option<i64>) -> Listed {
        Listed {
            key: key.into(),
            size,
            last_modified,
        }
    }

    #[test]
    fn groups_backups_by_manifest() {
        let p = "ns/db/backups/";
        let keys = [
            "ns/db/backups/20261201T110203Z-2/base.tar.zst",
            "ns/db/backups/20261201T110203Z-2/backup.json",
            "ns/db/backups/20261201T110203Z/backup.json",
            "ns/db/backups/20261201T110203Z/base.tar",
            "ns/db/backups/20261202T000000Z/base.tar.zst",
            "ns/db/backups/20261130T000000Z/base.tar.zst",
            "ns/db/backups/stray-object",
        ]
        .map(|k| listed(k, 1, None));
        let (complete, incomplete) = manifest::group_ids(&keys, p, MANIFEST_FILE);
        assert_eq!(complete, ["20261201T110203Z", "20261201T110203Z-2"]);
        assert_eq!(incomplete, ["20261130T000000Z", "20261202T000000Z"]);
    }

    #[test]
    fn keeps_only_wal_files() {
        let p = "p/wal/";
        let objects = vec![
            listed("p/wal/000000010000000000000003.zst", 10, Some(100)),
            listed("p/wal/000000010000000000000002", 20, Some(50)),
            listed("p/wal/00000002.history.zst", 1, Some(200)),
            listed("p/wal/RECOVERYXLOG", 1, Some(300)),
            listed("p/wal/sub/000000010000000000000004", 1, Some(300)),
        ];
        let wal = wal_objects(objects, p);
        let names: Vec<&str> = wal.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "000000010000000000000002",
                "000000010000000000000003",
                "00000002.history",
            ]
        );
        assert_eq!(wal[1].key, "p/wal/000000010000000000000003.zst");
        assert_eq!(wal[0].last_modified, "1970-01-01T00:00:50Z");
    }

    #[test]
    fn range_and_totals() {
        assert_eq!(Catalog::default().recoverable_range(), None);
        let first = sample();
        let second = Manifest {
            id: "20261201T120000Z".into(),
            finished_at: "2026-12-01T12:00:10Z".into(),
            ..sample()
        };
        let mut catalog = Catalog {
            dumps: vec![],
            backups: vec![first, second],
            incomplete: vec![],
            wal: vec![WalObject {
                name: "000000010000000000000009".into(),
                key: "k".into(),
                size: 5,
                last_modified: "2026-12-01T13:00:00Z".into(),
            }],
        };
        assert_eq!(
            catalog.recoverable_range(),
            Some((
                "2026-12-01T11:02:09Z".to_owned(),
                "2026-12-01T13:00:00Z".to_owned()
            ))
        );
        assert_eq!(catalog.total_bytes(), 8_000_005);
        catalog.wal[0].last_modified = "2026-12-01T11:00:00Z".into();
        assert_eq!(
            catalog.recoverable_range().unwrap().1,
            "2026-12-01T12:00:10Z"
        );
    }
}
