//! WAL file names and their object keys. Only names PostgreSQL archives are accepted,
//! which also keeps `/` and `..` out of every key and spool path.

use std::fmt;

/// PostgreSQL's default `wal_segment_size`; the operator never changes it.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Zstd,
    None,
}

impl Compression {
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "zstd" => Some(Self::Zstd),
            "none" => Some(Self::None),
            _ => None,
        }
    }

    /// What the object key ends with.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Zstd => ".zst",
            Self::None => "",
        }
    }

    pub fn other(self) -> Self {
        match self {
            Self::Zstd => Self::None,
            Self::None => Self::Zstd,
        }
    }
}

/// A segment's position: timeline, then the segment number across the whole WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentId {
    pub timeline: u32,
    pub log: u32,
    pub seg: u32,
}

impl SegmentId {
    /// The next `count` segment names of the same timeline; `segment_size` fixes how many
    /// segments one log file id holds (256 with 16 MiB).
    pub fn following(self, count: usize, segment_size: u64) -> Vec<SegmentId> {
        let per_log = segments_per_log(segment_size);
        let mut next = Vec::with_capacity(count);
        let mut id = self;
        for _ in 0..count {
            id = if u64::from(id.seg) + 1 >= per_log {
                match id.log.checked_add(1) {
                    Some(log) => SegmentId { log, seg: 0, ..id },
                    None => break,
                }
            } else {
                SegmentId {
                    seg: id.seg + 1,
                    ..id
                }
            };
            next.push(id);
        }
        next
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}{:08X}{:08X}", self.timeline, self.log, self.seg)
    }
}

fn segments_per_log(segment_size: u64) -> u64 {
    (0x1_0000_0000 / segment_size.max(1)).max(1)
}

/// One file of PostgreSQL's archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalFile {
    Segment(SegmentId),
    /// The last, incomplete segment of an old timeline, kept at promotion.
    Partial(SegmentId),
    History(u32),
    /// A base backup's label: segment, then the start offset in it.
    Backup(SegmentId, u32),
}

impl WalFile {
    pub fn parse(name: &str) -> Option<Self> {
        if let Some(tli) = name.strip_suffix(".history") {
            return parse_hex8(tli).map(WalFile::History);
        }
        if let Some(seg) = name.strip_suffix(".partial") {
            return parse_segment(seg).map(WalFile::Partial);
        }
        if let Some(rest) = name.strip_suffix(".backup") {
            let (seg, offset) = rest.split_once('.')?;
            return Some(WalFile::Backup(parse_segment(seg)?, parse_hex8(offset)?));
        }
        parse_segment(name).map(WalFile::Segment)
    }

    /// The full segment, when this is one (the only kind worth prefetching).
    pub fn segment(&self) -> Option<SegmentId> {
        match self {
            WalFile::Segment(id) => Some(*id),
            _ => None,
        }
    }

    pub fn timeline(&self) -> u32 {
        match self {
            WalFile::Segment(id) | WalFile::Partial(id) | WalFile::Backup(id, _) => id.timeline,
            WalFile::History(tli) => *tli,
        }
    }
}

impl fmt::Display for WalFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalFile::Segment(id) => write!(f, "{id}"),
            WalFile::Partial(id) => write!(f, "{id}.partial"),
            WalFile::History(tli) => write!(f, "{tli:08X}.history"),
            WalFile::Backup(id, offset) => write!(f, "{id}.{offset:08X}.backup"),
        }
    }
}

fn parse_hex8(s: &str) -> Option<u32> {
    // Upper case only, as PostgreSQL writes them; `from_str_radix` alone would take `+`.
    let ok = s.len() == 8
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
    ok.then(|| u32::from_str_radix(s, 16).ok()).flatten()
}

fn parse_segment(s: &str) -> Option<SegmentId> {
    if s.len() != 24 || !s.is_ascii() {
        return None;
    }
    Some(SegmentId {
        timeline: parse_hex8(&s[0..8])?,
        log: parse_hex8(&s[8..16])?,
        seg: parse_hex8(&s[16..24])?,
    })
}

/// `<prefix>/wal/<name><suffix>`; `prefix` has no slashes at its ends.
pub fn object_key(prefix: &str, file: &WalFile, compression: Compression) -> String {
    let dir = if prefix.is_empty() {
        "wal".to_owned()
    } else {
        format!("{prefix}/wal")
    };
    format!("{dir}/{file}{}", compression.suffix())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(name: &str) -> SegmentId {
        WalFile::parse(name).unwrap().segment().unwrap()
    }

    #[test]
    fn parses_every_archived_kind() {
        let id = SegmentId {
            timeline: 2,
            log: 0x1A,
            seg: 0xFF,
        };
        for (name, file) in [
            ("000000020000001A000000FF", WalFile::Segment(id)),
            ("000000020000001A000000FF.partial", WalFile::Partial(id)),
            ("00000002.history", WalFile::History(2)),
            (
                "000000020000001A000000FF.00000028.backup",
                WalFile::Backup(id, 0x28),
            ),
        ] {
            assert_eq!(WalFile::parse(name), Some(file.clone()), "{name}");
            assert_eq!(file.to_string(), name);
            assert_eq!(file.timeline(), 2);
        }
    }

    #[test]
    fn rejects_other_names() {
        for name in [
            "",
            "RECOVERYXLOG",
            "000000010000000000000001x",
            "00000001000000000000000",
            "000000010000000000000001.zst",
            "0000000100000000000000ab",
            "+0000001000000000000000A",
            "../../000000010000000000000",
            "0000000G.history",
            "000000010000000000000001.backup",
        ] {
            assert_eq!(WalFile::parse(name), None, "{name}");
        }
    }

    #[test]
    fn next_segments_roll_over_the_log_id_with_16_mib_segments() {
        let next = seg("0000000100000000000000FD").following(4, DEFAULT_SEGMENT_SIZE);
        let names: Vec<String> = next.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "0000000100000000000000FE",
                "0000000100000000000000FF",
                "000000010000000100000000",
                "000000010000000100000001",
            ]
        );
        // Same timeline always, whatever the count.
        assert!(next.iter().all(|id| id.timeline == 1));
        assert!(seg("000000010000000000000001")
            .following(0, DEFAULT_SEGMENT_SIZE)
            .is_empty());
    }

    #[test]
    fn next_segments_follow_the_segment_size() {
        // 1 GiB segments: four per log id.
        let next = seg("000000030000000500000003").following(2, 1 << 30);
        assert_eq!(next[0].to_string(), "000000030000000600000000");
        assert_eq!(next[1].to_string(), "000000030000000600000001");
        // The end of the WAL address space stops the list instead of wrapping.
        assert!(seg("00000001FFFFFFFF000000FF")
            .following(3, DEFAULT_SEGMENT_SIZE)
            .is_empty());
    }

    #[test]
    fn segment_names_sort_in_wal_order() {
        assert!(seg("0000000100000000000000FF") < seg("000000010000000100000000"));
        assert!(seg("000000010000000A00000000") < seg("000000020000000000000000"));
    }

    #[test]
    fn object_keys() {
        let file = WalFile::parse("000000010000000000000001").unwrap();
        assert_eq!(
            object_key("ns/name", &file, Compression::Zstd),
            "ns/name/wal/000000010000000000000001.zst"
        );
        assert_eq!(
            object_key("", &file, Compression::None),
            "wal/000000010000000000000001"
        );
        let history = WalFile::parse("00000002.history").unwrap();
        assert_eq!(
            object_key("p", &history, Compression::Zstd),
            "p/wal/00000002.history.zst"
        );
        assert_eq!(Compression::parse("ZSTD"), Some(Compression::Zstd));
        assert_eq!(Compression::Zstd.other(), Compression::None);
    }
}
