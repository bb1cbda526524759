//! What a backup's tar says about itself, read as it streams by: with `-X none`
//! `pg_basebackup` prints no WAL positions, so they come from its `backup_label` (the
//! start) and the `backup_manifest` it appends to the tar (its `WAL-Ranges`: the end),
//! and the server's major version from `PG_VERSION`.

use serde::Deserialize;

use crate::postgres::lsn;

const BLOCK: usize = 512;
/// `backup_label` and `PG_VERSION` are a few hundred bytes.
const SMALL_LIMIT: usize = 64 * 1024;
/// The manifest lists every file before its WAL ranges: only its end is kept.
const MANIFEST_TAIL: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    Label,
    Manifest,
    Version,
}

/// Fed the tar stream in pieces of any size.
#[derive(Debug, Default)]
pub struct TarScan {
    header: Vec<u8>,
    /// Bytes of the current entry left, padding included, and of its content.
    left: u64,
    content_left: u64,
    current: Option<Wanted>,
    label: Vec<u8>,
    manifest_tail: Vec<u8>,
    version: Vec<u8>,
}

/// Where a backup's WAL starts and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Points {
    pub timeline: u32,
    pub start_lsn: u64,
    /// The timeline of the end (another than the start's only when a standby was
    /// promoted during the backup).
    pub stop_timeline: u32,
    pub stop_lsn: u64,
}

impl TarScan {
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.left == 0 {
                let n = (BLOCK - self.header.len()).min(data.len());
                self.header.extend_from_slice(&data[..n]);
                data = &data[n..];
                if self.header.len() == BLOCK {
                    self.start_entry();
                }
                continue;
            }
            let n = usize::try_from(self.left)
                .unwrap_or(usize::MAX)
                .min(data.len());
            let content = usize::try_from(self.content_left)
                .unwrap_or(usize::MAX)
                .min(n);
            self.keep(&data[..content]);
            self.content_left -= content as u64;
            self.left -= n as u64;
            data = &data[n..];
        }
    }

    fn start_entry(&mut self) {
        let header = std::mem::take(&mut self.header);
        // Zero blocks end the archive.
        if header.iter().all(|b| *b == 0) {
            return;
        }
        let size = entry_size(&header).unwrap_or(0);
        let name = entry_name(&header);
        let regular = matches!(header[156], b'0' | 0);
        self.current = match name.as_str() {
            "backup_label" if regular => Some(Wanted::Label),
            "backup_manifest" if regular => Some(Wanted::Manifest),
            "PG_VERSION" if regular => Some(Wanted::Version),
            _ => None,
        };
        self.content_left = size;
        self.left = size.div_ceil(BLOCK as u64) * BLOCK as u64;
    }

    fn keep(&mut self, content: &[u8]) {
        let small = |buf: &mut Vec<u8>| {
            let room = SMALL_LIMIT.saturating_sub(buf.len());
            buf.extend_from_slice(&content[..room.min(content.len())]);
        };
        match self.current {
            Some(Wanted::Label) => small(&mut self.label),
            Some(Wanted::Version) => small(&mut self.version),
            Some(Wanted::Manifest) => {
                self.manifest_tail.extend_from_slice(content);
                let excess = self.manifest_tail.len().saturating_sub(MANIFEST_TAIL);
                self.manifest_tail.drain(..excess);
            }
            None => {}
        }
    }

    /// The start from `backup_label`, the end from the manifest's last WAL range.
    pub fn points(&self) -> Option<Points> {
        let label = String::from_utf8_lossy(&self.label);
        let field = |name: &str| {
            label
                .lines()
                .find_map(|l| l.strip_prefix(name).map(str::trim))
        };
        let start = field("START WAL LOCATION:")?.split_whitespace().next()?;
        let timeline = field("START TIMELINE:")?.parse().ok()?;
        let end = wal_ranges(&String::from_utf8_lossy(&self.manifest_tail))?.pop()?;
        Some(Points {
            timeline,
            start_lsn: lsn::parse(start)?,
            stop_timeline: end.timeline,
            stop_lsn: lsn::parse(&end.end_lsn)?,
        })
    }

    /// `PG_VERSION`: the server's major version.
    pub fn version(&self) -> Option<String> {
        let text = String::from_utf8_lossy(&self.version);
        let version = text.trim();
        (!version.is_empty() && version.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
            .then(|| version.to_owned())
    }
}

#[derive(Debug, Deserialize)]
struct WalRange {
    #[serde(rename = "Timeline")]
    timeline: u32,
    #[serde(rename = "End-LSN")]
    end_lsn: String,
}

/// The `"WAL-Ranges": [...]` array of a manifest's end.
fn wal_ranges(tail: &str) -> Option<Vec<WalRange>> {
    let after = &tail[tail.rfind("\"WAL-Ranges\"")?..];
    let open = after.find('[')?;
    let close = open + after[open..].find(']')?;
    serde_json::from_str(&after[open..=close]).ok()
}

/// `name` (100 bytes) behind the ustar `prefix` (155 bytes at 345), NUL-terminated.
fn entry_name(header: &[u8]) -> String {
    let field = |range: std::ops::Range<usize>| {
        let bytes = &header[range];
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[..end]).into_owned()
    };
    let name = field(0..100);
    let prefix = if &header[257..262] == b"ustar" {
        field(345..500)
    } else {
        String::new()
    };
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    }
}

/// Octal, or base-256 (high bit set) for files of 8 GiB and more.
fn entry_size(header: &[u8]) -> Option<u64> {
    let field = &header[124..136];
    if field[0] & 0x80 != 0 {
        return Some(
            field[1..]
                .iter()
                .fold(0u64, |n, b| (n << 8) | u64::from(*b)),
        );
    }
    let text = std::str::from_utf8(field).ok()?;
    let digits = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(digits, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, content: &[u8]) -> Vec<u8> {
        let mut header = vec![0u8; BLOCK];
        header[..name.len()].copy_from_slice(name.as_bytes());
        let size = format!("{:011o}\0", content.len());
        header[124..136].copy_from_slice(size.as_bytes());
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        let mut out = header;
        out.extend_from_slice(content);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        out
    }

    const LABEL: &str = "START WAL LOCATION: 0/5000028 (file 000000010000000000000005)\n\
CHECKPOINT LOCATION: 0/5000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
START TIME: 2026-12-02 03:06:38 UTC\nLABEL: pg_basebackup base backup\nSTART TIMELINE: 1\n";

    fn manifest(files: usize, ranges: &str) -> String {
        let mut m = String::from("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n");
        for i in 0..files {
            m.push_str(&format!(
                "{{ \"Path\": \"base/1/{i}\", \"Size\": 8192, \"Checksum\": \"00\" }},\n"
            ));
        }
        m.push_str(&format!(
            "],\n\"WAL-Ranges\": [\n{ranges}\n],\n\"Manifest-Checksum\": \"ab\"}}\n"
        ));
        m
    }

    fn tar(manifest: &str) -> Vec<u8> {
        let mut t = entry("backup_label", LABEL.as_bytes());
        t.extend(entry("PG_VERSION", b"15\n"));
        t.extend(entry("base/1/1259", &vec![7u8; 20_000]));
        t.extend(entry("backup_manifest", manifest.as_bytes()));
        t.extend(vec![0u8; 2 * BLOCK]);
        t
    }

    #[test]
    fn finds_the_points_in_pieces_of_any_size() {
        let one = "{ \"Timeline\": 1, \"Start-LSN\": \"0/5000028\", \"End-LSN\": \"0/5000100\" }";
        let stream = tar(&manifest(3000, one));
        for piece in [1, 7, 511, 512, 4096, stream.len()] {
            let mut scan = TarScan::default();
            stream.chunks(piece).for_each(|c| scan.feed(c));
            let points = scan.points().unwrap();
            assert_eq!(
                points,
                Points {
                    timeline: 1,
                    start_lsn: 0x0500_0028,
                    stop_timeline: 1,
                    stop_lsn: 0x0500_0100,
                },
                "pieces of {piece}"
            );
            assert_eq!(scan.version().as_deref(), Some("15"));
        }
    }

    #[test]
    fn the_end_is_the_last_range() {
        let two =
            "{ \"Timeline\": 1, \"Start-LSN\": \"0/5000028\", \"End-LSN\": \"0/6000000\" },\n\
                   { \"Timeline\": 2, \"Start-LSN\": \"0/6000000\", \"End-LSN\": \"0/6000200\" }";
        let mut scan = TarScan::default();
        scan.feed(&tar(&manifest(1, two)));
        let points = scan.points().unwrap();
        assert_eq!((points.stop_timeline, points.stop_lsn), (2, 0x0600_0200));
    }

    #[test]
    fn nothing_without_label_or_manifest() {
        let mut scan = TarScan::default();
        scan.feed(&entry("backup_label", LABEL.as_bytes()));
        assert_eq!(scan.points(), None);
        let mut scan = TarScan::default();
        scan.feed(&entry("global/backup_label", LABEL.as_bytes()));
        scan.feed(&entry("backup_manifest", manifest(1, "").as_bytes()));
        assert_eq!(scan.points(), None);
        assert_eq!(scan.version(), None);
    }

    #[test]
    fn sizes() {
        let mut header = vec![0u8; BLOCK];
        header[124..136].copy_from_slice(b"00000001000\0");
        assert_eq!(entry_size(&header), Some(512));
        header[124] = 0x80;
        header[125..136].fill(0);
        header[131] = 2;
        assert_eq!(entry_size(&header), Some(2 << 32));
    }
}
