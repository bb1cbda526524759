//! A base backup's manifest (`backup.json`), the bucket layout of backups, backup ids,
//! and the WAL segments that hold an LSN.

use serde::{Deserialize, Serialize};

use crate::archive::segment::{Compression, SegmentId, DEFAULT_SEGMENT_SIZE};
use crate::archive::store::Listed;
use crate::postgres::lsn;

use super::time;

pub const MANIFEST_FILE: &str = "backup.json";
/// The data object, before the compression's suffix.
pub const DATA_FILE: &str = "base.tar";

/// Written last, after the data and the WAL the backup needs are in the bucket: a
/// backup without one never counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The UTC start time, `YYYYMMDDTHHMMSSZ`, with `-2`, `-3`... when taken already.
    pub id: String,
    pub timeline: u32,
    /// PostgreSQL's text form, `0/5000028`.
    pub start_lsn: String,
    pub stop_lsn: String,
    /// The segment holding the start LSN.
    pub start_wal: String,
    /// The last segment recovery needs to reach consistency.
    pub stop_wal: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// RFC 3339, UTC, rounded up: a recovery target after it is reachable.
    pub finished_at: String,
    /// Bytes of the tar stream.
    pub size_bytes: u64,
    /// Bytes of the stored object.
    pub stored_bytes: u64,
    /// SHA-256 of the stored object.
    pub sha256: String,
    #[serde(with = "compression_name")]
    pub compression: Compression,
    /// The server it was taken from.
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_version: Option<String>,
}

impl Manifest {
    pub fn data_key(&self, prefix: &str) -> String {
        data_key(prefix, &self.id, self.compression)
    }

    pub fn finished_secs(&self) -> Option<i64> {
        time::parse_rfc3339(&self.finished_at)
    }

    pub fn stop_lsn_value(&self) -> Option<u64> {
        lsn::parse(&self.stop_lsn)
    }

    pub fn start_segment(&self) -> Option<SegmentId> {
        crate::archive::segment::WalFile::parse(&self.start_wal)?.segment()
    }
}

/// `"zstd"` or `"none"`, as `GEODB_WAL_COMPRESSION` spells them.
pub(crate) mod compression_name {
    use serde::{Deserialize as _, Deserializer, Serializer};

    use crate::archive::segment::Compression;

    pub fn serialize<S: Serializer>(value: &Compression, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match value {
            Compression::Zstd => "zstd",
            Compression::None => "none",
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Compression, D::Error> {
        let name = String::deserialize(d)?;
        Compression::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("{name:?} is neither zstd nor none")))
    }
}

pub(crate) fn under_prefix(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_owned()
    } else {
        format!("{prefix}/{rest}")
    }
}

/// `<prefix>/backups/`.
pub fn backups_prefix(prefix: &str) -> String {
    under_prefix(prefix, "backups/")
}

/// `<prefix>/backups/<id>/`: with the slash, so `<id>-2` is not under it.
pub fn backup_dir(prefix: &str, id: &str) -> String {
    format!("{}{id}/", backups_prefix(prefix))
}

pub fn data_key(prefix: &str, id: &str, compression: Compression) -> String {
    format!(
        "{}{DATA_FILE}{}",
        backup_dir(prefix, id),
        compression.suffix()
    )
}

pub fn manifest_key(prefix: &str, id: &str) -> String {
    format!("{}{MANIFEST_FILE}", backup_dir(prefix, id))
}

/// `<prefix>/wal/`.
pub fn wal_prefix(prefix: &str) -> String {
    under_prefix(prefix, "wal/")
}

/// How ids sort: by time, then by their `-N` suffix as a number (`-10` after `-9`).
pub fn id_order(id: &str) -> (&str, u32) {
    match id.rsplit_once('-') {
        Some((base, n)) => match n.parse::<u32>() {
            Ok(n) => (base, n),
            Err(_) => (id, 1),
        },
        None => (id, 1),
    }
}

/// `base`, or `base-2`, `base-3`... whichever is not in `taken`.
pub fn free_id(base: &str, taken: &[String]) -> String {
    let used = |id: &str| taken.iter().any(|t| t == id);
    if !used(base) {
        return base.to_owned();
    }
    (2u32..)
        .map(|n| format!("{base}-{n}"))
        .find(|id| !used(id))
        .unwrap_or_else(|| base.to_owned())
}

/// The ids under `dir` (`<prefix>/backups/` or `<prefix>/dumps/`): those with a
/// `manifest_file`, and those without (each oldest first).
pub fn group_ids(listed: &[Listed], dir: &str, manifest_file: &str) -> (Vec<String>, Vec<String>) {
    let mut ids: std::collections::BTreeMap<&str, bool> = std::collections::BTreeMap::new();
    for object in listed {
        let Some((id, file)) = object
            .key
            .strip_prefix(dir)
            .and_then(|rest| rest.split_once('/'))
        else {
            continue;
        };
        if id.is_empty() {
            continue;
        }
        *ids.entry(id).or_default() |= file == manifest_file;
    }
    let mut ids: Vec<(&str, bool)> = ids.into_iter().collect();
    ids.sort_by(|a, b| id_order(a.0).cmp(&id_order(b.0)));
    let (complete, incomplete): (Vec<_>, Vec<_>) = ids.into_iter().partition(|(_, m)| *m);
    let names = |v: Vec<(&str, bool)>| v.into_iter().map(|(id, _)| id.to_owned()).collect();
    (names(complete), names(incomplete))
}

/// The segment holding the byte at `lsn` (16 MiB segments).
pub fn segment_of(timeline: u32, lsn: u64) -> SegmentId {
    let number = lsn / DEFAULT_SEGMENT_SIZE;
    let per_log = 0x1_0000_0000 / DEFAULT_SEGMENT_SIZE;
    SegmentId {
        timeline,
        log: u32::try_from(number / per_log).unwrap_or(u32::MAX),
        seg: u32::try_from(number % per_log).unwrap_or(u32::MAX),
    }
}

/// The last segment a backup ending at `stop_lsn` needs: the one holding the byte
/// before it (PostgreSQL waits for the same one), so an end exactly on a segment
/// boundary does not ask for a segment nobody writes.
pub fn stop_segment(timeline: u32, stop_lsn: u64) -> SegmentId {
    segment_of(timeline, stop_lsn.saturating_sub(1))
}

/// A manifest for other modules' tests.
#[cfg(test)]
pub(crate) fn sample() -> Manifest {
    Manifest {
        id: "20261201T110203Z".into(),
        timeline: 1,
        start_lsn: "0/2000028".into(),
        stop_lsn: "0/2000100".into(),
        start_wal: "000000010000000000000002".into(),
        stop_wal: "000000010000000000000002".into(),
        started_at: "2026-12-01T11:02:03Z".into(),
        finished_at: "2026-12-01T11:02:09Z".into(),
        size_bytes: 30_000_000,
        stored_bytes: 4_000_000,
        sha256: "ab".repeat(32),
        compression: Compression::Zstd,
        source: "db-0.db".into(),
        pg_version: Some("15.8".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_in_camel_case() {
        let m = sample();
        let json = serde_json::to_string(&m).unwrap();
        for field in [
            "\"startLsn\":\"0/2000028\"",
            "\"stopWal\":",
            "\"finishedAt\":",
            "\"sizeBytes\":30000000",
            "\"storedBytes\":",
            "\"compression\":\"zstd\"",
            "\"pgVersion\":\"15.8\"",
        ] {
            assert!(json.contains(field), "{field} in {json}");
        }
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
        let mut plain = Manifest {
            pg_version: None,
            compression: Compression::None,
            ..m
        };
        let json = serde_json::to_string(&plain).unwrap();
        assert!(
            !json.contains("pgVersion") && json.contains("\"none\""),
            "{json}"
        );
        plain.compression = Compression::None;
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), plain);
        let bad = json.replace("\"none\"", "\"gzip\"");
        assert!(serde_json::from_str::<Manifest>(&bad).is_err());
    }

    #[test]
    fn keys() {
        let m = sample();
        assert_eq!(
            m.data_key("ns/db"),
            "ns/db/backups/20261201T110203Z/base.tar.zst"
        );
        assert_eq!(data_key("", "x", Compression::None), "backups/x/base.tar");
        assert_eq!(manifest_key("p", "x"), "p/backups/x/backup.json");
        assert_eq!(wal_prefix("p"), "p/wal/");
        assert_eq!(backup_dir("", "x"), "backups/x/");
    }

    #[test]
    fn ids() {
        let base = "20261201T110203Z";
        assert_eq!(free_id(base, &[]), base);
        let taken = [base.to_owned(), format!("{base}-2")];
        assert_eq!(free_id(base, &taken), format!("{base}-3"));
        assert!(id_order(&format!("{base}-10")) > id_order(&format!("{base}-9")));
        assert!(id_order(base) < id_order(&format!("{base}-2")));
        assert!(id_order("20261201T110204Z") > id_order(&format!("{base}-2")));
    }

    #[test]
    fn segments_of_lsns() {
        let name = |tli, text| segment_of(tli, lsn::parse(text).unwrap()).to_string();
        assert_eq!(name(1, "0/2000028"), "000000010000000000000002");
        assert_eq!(name(3, "16/B374D848"), "0000000300000016000000B3");
        assert_eq!(name(1, "0/FFFFFFFF"), "0000000100000000000000FF");
        assert_eq!(name(1, "1/0"), "000000010000000100000000");
        let stop = |text| stop_segment(2, lsn::parse(text).unwrap()).to_string();
        assert_eq!(stop("0/3000000"), "000000020000000000000002");
        assert_eq!(stop("0/3000001"), "000000020000000000000003");
        assert_eq!(stop("1/0"), "0000000200000000000000FF");
        let m = sample();
        assert_eq!(m.start_segment().unwrap().seg, 2);
        assert_eq!(m.stop_lsn_value(), Some(0x0200_0100));
        assert!(m.finished_secs().is_some());
    }
}
