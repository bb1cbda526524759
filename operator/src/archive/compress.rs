//! zstd for WAL objects: segments are mostly zeros or repetitive pages, so even a fast
//! level shrinks them several times over.

use std::io::Read;

use super::segment::Compression;

/// Level 1: on WAL it stores as small as level 3 (measured: 0.379 against 0.382 of the
/// raw size) at about twice the speed (165 against 87 MB/s on one core here), and
/// compression is what bounds how fast a backlog drains (`make bench-backup`).
const LEVEL: i32 = 1;
/// The largest `wal_segment_size` PostgreSQL allows; a bigger output is not WAL.
const MAX_DECODED: u64 = 1 << 30;

pub fn encode(data: &[u8], compression: Compression) -> std::io::Result<Vec<u8>> {
    match compression {
        Compression::Zstd => zstd::bulk::compress(data, LEVEL),
        Compression::None => Ok(data.to_vec()),
    }
}

pub fn decode(data: &[u8], compression: Compression) -> std::io::Result<Vec<u8>> {
    match compression {
        Compression::Zstd => {
            let mut out = Vec::new();
            zstd::stream::read::Decoder::new(data)?
                .take(MAX_DECODED + 1)
                .read_to_end(&mut out)?;
            if out.len() as u64 > MAX_DECODED {
                return Err(std::io::Error::other("decompresses to more than 1 GiB"));
            }
            Ok(out)
        }
        Compression::None => Ok(data.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let mut wal = vec![0u8; 1 << 20];
        wal[..5].copy_from_slice(b"hello");
        let packed = encode(&wal, Compression::Zstd).unwrap();
        assert!(packed.len() < wal.len() / 100);
        assert_eq!(decode(&packed, Compression::Zstd).unwrap(), wal);
        assert_eq!(decode(b"abc", Compression::None).unwrap(), b"abc");
        assert!(decode(b"not zstd at all", Compression::Zstd).is_err());
    }
}
