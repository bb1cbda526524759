//! The spool directory: `archived/<name>` marks a file uploaded ahead of PostgreSQL's
//! request (with what was uploaded, where), `prefetch/<name>` holds a verified download
//! waiting for its request, with its checksum and origin in `prefetch/<name>.sha256`.
//! Files appear by rename, so a crash leaves only `*.tmp` files, ignored and cleaned
//! later. Both record the archive they belong to, so a spool left by another
//! configuration (another bucket or prefix) is never trusted.

use std::fs;
use std::path::{Path, PathBuf};

use super::checksum::sha256_hex;
use super::error::{ArchiveError, Result};

const ARCHIVED: &str = "archived";
const PREFETCH: &str = "prefetch";
const SHA_SUFFIX: &str = ".sha256";

pub struct Spool {
    dir: PathBuf,
}

/// What identifies a WAL file's content without reading it again: PostgreSQL never
/// rewrites a file it has marked ready, and a file put in its place (a rewind, a
/// restore) is a new inode or a new modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    len: u64,
    ino: u64,
    mtime_ns: i128,
}

impl Stamp {
    pub fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = fs::metadata(path).ok()?;
        Some(Self {
            len: meta.len(),
            ino: meta.ino(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        })
    }
}

impl std::fmt::Display for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.len, self.ino, self.mtime_ns)
    }
}

/// What an `archived/` marker says: the file as `stamp` saw it, with this content, went
/// to this object of `origin` ([`ArchiveConfig::origin`](super::ArchiveConfig::origin)).
pub fn marker(sha256: &str, origin: &str, key: &str, stamp: Stamp) -> String {
    format!("{sha256} {origin} {key} {stamp}\n")
}

/// Whether `marker` vouches for the file as it is now (`stamp`) in this archive.
pub fn marker_vouches(marker: &str, origin: &str, key: &str, stamp: Stamp) -> bool {
    marker.split_once(' ').is_some_and(|(sha256, rest)| {
        sha256.len() == 64
            && sha256.bytes().all(|b| b.is_ascii_hexdigit())
            && rest == format!("{origin} {key} {stamp}\n")
    })
}

impl Spool {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub fn archived_marker(&self, name: &str) -> Option<String> {
        fs::read_to_string(self.dir.join(ARCHIVED).join(name)).ok()
    }

    pub fn mark_archived(&self, name: &str, marker: &str) -> Result<()> {
        self.write_atomically(ARCHIVED, name, marker.as_bytes())
    }

    /// Forget a marker once PostgreSQL has been told; a missing one is fine.
    pub fn clear_archived(&self, name: &str) {
        let _ = fs::remove_file(self.dir.join(ARCHIVED).join(name));
    }

    pub fn has_prefetched(&self, name: &str) -> bool {
        self.dir.join(PREFETCH).join(name).exists()
    }

    /// Keep a verified download from `origin` for a later request.
    pub fn store_prefetched(
        &self,
        name: &str,
        content: &[u8],
        sha256: &str,
        origin: &str,
    ) -> Result<()> {
        // The checksum first: a content file without one is never served.
        let sum = format!("{sha256} {origin}\n");
        self.write_atomically(PREFETCH, &format!("{name}{SHA_SUFFIX}"), sum.as_bytes())?;
        self.write_atomically(PREFETCH, name, content)
    }

    /// The prefetched content of `name` from `origin`, removed from the spool; `None`
    /// when there is none, it came from elsewhere or it no longer matches its checksum
    /// (then it is discarded).
    pub fn take_prefetched(&self, name: &str, origin: &str) -> Option<Vec<u8>> {
        let dir = self.dir.join(PREFETCH);
        let sum_path = dir.join(format!("{name}{SHA_SUFFIX}"));
        let content = fs::read(dir.join(name)).ok();
        let expected = fs::read_to_string(&sum_path).ok();
        let _ = fs::remove_file(dir.join(name));
        let _ = fs::remove_file(&sum_path);
        let content = content?;
        let expected = expected?;
        let (sum, from) = expected.trim_end().split_once(' ')?;
        (from == origin && sha256_hex(&content) == sum).then_some(content)
    }

    /// Drop prefetched files that `keep` rejects (behind the recovery, or of a
    /// timeline it left), so the spool never grows past one prefetch window.
    pub fn prune_prefetched(&self, keep: impl Fn(&str) -> bool) {
        let Ok(entries) = fs::read_dir(self.dir.join(PREFETCH)) else {
            return;
        };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let name = file.strip_suffix(SHA_SUFFIX).unwrap_or(&file);
            if !keep(name) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    fn write_atomically(&self, sub: &str, name: &str, content: &[u8]) -> Result<()> {
        let dir = self.dir.join(sub);
        fs::create_dir_all(&dir).map_err(ArchiveError::io(&dir))?;
        let tmp = dir.join(format!("{name}.tmp"));
        let path = dir.join(name);
        fs::write(&tmp, content).map_err(ArchiveError::io(&tmp))?;
        fs::rename(&tmp, &path).map_err(ArchiveError::io(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool(test: &str) -> (Spool, PathBuf) {
        let dir = std::env::temp_dir().join(format!("geodb-spool-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        (Spool::new(&dir), dir)
    }

    #[test]
    fn markers() {
        let (s, dir) = spool("markers");
        assert_eq!(s.archived_marker("A"), None);
        let stamp = Stamp {
            len: 3,
            ino: 7,
            mtime_ns: 11,
        };
        let sum = sha256_hex(b"abc");
        let m = marker(&sum, "http://s3/b/p", "p/wal/A.zst", stamp);
        assert_eq!(m, format!("{sum} http://s3/b/p p/wal/A.zst 3:7:11\n"));
        assert!(marker_vouches(&m, "http://s3/b/p", "p/wal/A.zst", stamp));
        let touched = Stamp {
            mtime_ns: 12,
            ..stamp
        };
        assert!(!marker_vouches(&m, "http://s3/b/p", "p/wal/A.zst", touched));
        assert!(!marker_vouches(&m, "http://s3/b/q", "p/wal/A.zst", stamp));
        assert!(!marker_vouches(&m, "http://s3/b/p", "p/wal/A", stamp));
        // A marker of the older format (no stamp) vouches for nothing.
        let old = format!("{sum} http://s3/b/p p/wal/A.zst\n");
        assert!(!marker_vouches(&old, "http://s3/b/p", "p/wal/A.zst", stamp));
        s.mark_archived("A", &m).unwrap();
        assert_eq!(s.archived_marker("A").as_deref(), Some(m.as_str()));
        s.clear_archived("A");
        s.clear_archived("A");
        assert_eq!(s.archived_marker("A"), None);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn stamps_change_with_the_file() {
        let (_, dir) = spool("stamps");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        fs::write(&path, b"abc").unwrap();
        let first = Stamp::of(&path).unwrap();
        assert_eq!(Stamp::of(&path), Some(first));
        // Another file put in its place.
        fs::write(dir.join("g"), b"abd").unwrap();
        fs::rename(dir.join("g"), &path).unwrap();
        assert_ne!(Stamp::of(&path), Some(first));
        assert_eq!(Stamp::of(&dir.join("missing")), None);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn prefetched_files_are_served_once_and_only_when_intact() {
        let (s, dir) = spool("prefetch");
        let sum = sha256_hex(b"abc");
        s.store_prefetched("A", b"abc", &sum, "o").unwrap();
        assert!(s.has_prefetched("A"));
        assert_eq!(s.take_prefetched("A", "o").as_deref(), Some(&b"abc"[..]));
        assert_eq!(s.take_prefetched("A", "o"), None);

        s.store_prefetched("B", b"abc", &sum, "o").unwrap();
        fs::write(dir.join(PREFETCH).join("B"), b"abd").unwrap();
        assert_eq!(s.take_prefetched("B", "o"), None);
        assert!(!s.has_prefetched("B"));

        // From another archive: discarded, not served.
        s.store_prefetched("C", b"abc", &sum, "other").unwrap();
        assert_eq!(s.take_prefetched("C", "o"), None);
        assert!(!s.has_prefetched("C"));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn pruning_keeps_the_window() {
        let (s, dir) = spool("prune");
        for name in ["A", "B", "C"] {
            let sum = sha256_hex(name.as_bytes());
            s.store_prefetched(name, name.as_bytes(), &sum, "o")
                .unwrap();
        }
        s.prune_prefetched(|n| n == "B");
        assert!(!s.has_prefetched("A") && s.has_prefetched("B") && !s.has_prefetched("C"));
        assert!(dir.join(PREFETCH).join("B.sha256").exists());
        assert!(!dir.join(PREFETCH).join("A.sha256").exists());
        fs::remove_dir_all(dir).unwrap();
    }
}
