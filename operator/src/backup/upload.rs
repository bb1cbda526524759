//! A byte stream into one S3 multipart upload: compressed and hashed on a blocking
//! thread, cut into parts, at most [`PARTS_IN_FLIGHT`] uploading at once. Memory stays
//! at a few parts, whatever the size of the backup.

use std::io::{self, Read, Write};

use aws_sdk_s3::primitives::SdkBody;
use futures::stream::{self, StreamExt as _, TryStreamExt as _};
use tokio::sync::mpsc;

use crate::archive::segment::Compression;
use crate::archive::store::Store;
use crate::archive::{ArchiveError, Result};

pub const PART_SIZE: usize = 16 * 1024 * 1024;
pub const PARTS_IN_FLIGHT: usize = 2;
/// S3's limit: with 16 MiB parts, 160 GiB stored.
pub const MAX_PARTS: usize = 10_000;
/// Level 1: a base backup is mostly table pages, and one core must keep up with the
/// network.
const LEVEL: i32 = 1;
const READ_CHUNK: usize = 256 * 1024;

/// What went through, counted on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Produced {
    /// Bytes read (the tar stream).
    pub input_bytes: u64,
    /// Bytes stored (after compression).
    pub stored_bytes: u64,
    /// SHA-256 of the stored bytes.
    pub sha256: String,
}

/// Blocking: read `input` to its end, show it to `observe`, compress, hash, and send
/// full parts (the last one shorter) to `parts`. Fails when the receiver is gone (the
/// upload stopped).
pub fn produce(
    mut input: impl Read,
    compression: Compression,
    parts: mpsc::Sender<Vec<u8>>,
    observe: &mut dyn FnMut(&[u8]),
) -> io::Result<Produced> {
    let sink = PartSink {
        part: Vec::with_capacity(PART_SIZE),
        parts,
        sha256: ring::digest::Context::new(&ring::digest::SHA256),
        stored: 0,
    };
    let (input_bytes, sink) = match compression {
        Compression::Zstd => {
            let mut encoder = zstd::stream::write::Encoder::new(sink, LEVEL)?;
            let n = copy(&mut input, &mut encoder, observe)?;
            (n, encoder.finish()?)
        }
        Compression::None => {
            let mut sink = sink;
            (copy(&mut input, &mut sink, observe)?, sink)
        }
    };
    sink.finish(input_bytes)
}

fn copy(
    input: &mut impl Read,
    output: &mut impl Write,
    observe: &mut dyn FnMut(&[u8]),
) -> io::Result<u64> {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut total = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        observe(&buf[..n]);
        output.write_all(&buf[..n])?;
        total += n as u64;
    }
}

struct PartSink {
    part: Vec<u8>,
    parts: mpsc::Sender<Vec<u8>>,
    sha256: ring::digest::Context,
    stored: u64,
}

impl PartSink {
    fn send(&mut self) -> io::Result<()> {
        let full = std::mem::replace(&mut self.part, Vec::with_capacity(PART_SIZE));
        self.parts
            .blocking_send(full)
            .map_err(|_| io::Error::other("the upload stopped"))
    }

    fn finish(mut self, input_bytes: u64) -> io::Result<Produced> {
        if !self.part.is_empty() {
            self.send()?;
        }
        Ok(Produced {
            input_bytes,
            stored_bytes: self.stored,
            sha256: hex(self.sha256.finish().as_ref()),
        })
    }
}

impl Write for PartSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(PART_SIZE - self.part.len());
        self.part.extend_from_slice(&data[..n]);
        self.sha256.update(&data[..n]);
        self.stored += n as u64;
        if self.part.len() == PART_SIZE {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Upload the parts from `parts` as they come, in order; their ETags. Stops at the
/// first failure, dropping `parts` so that the producer stops too.
pub async fn upload(
    store: &Store,
    name: &str,
    key: &str,
    upload_id: &str,
    parts: mpsc::Receiver<Vec<u8>>,
) -> Result<Vec<String>> {
    let incoming = stream::unfold(parts, |mut rx| async move {
        rx.recv().await.map(|part| (part, rx))
    });
    incoming
        .enumerate()
        .map(|(i, part)| async move {
            if i >= MAX_PARTS {
                return Err(ArchiveError::Runtime(format!(
                    "{name}: more than {MAX_PARTS} parts of {} MiB",
                    PART_SIZE >> 20
                )));
            }
            let number = i32::try_from(i + 1).unwrap_or(i32::MAX);
            store
                .upload_part(name, key, upload_id, number, &SdkBody::from(part))
                .await
        })
        .buffered(PARTS_IN_FLIGHT)
        .try_collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Incompressible-ish bytes, so zstd output spans several parts.
    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn run(input: Vec<u8>, compression: Compression) -> (Produced, Vec<Vec<u8>>) {
        let (tx, mut rx) = mpsc::channel(1);
        let producer = std::thread::spawn(move || {
            let mut seen = 0usize;
            let produced = produce(&input[..], compression, tx, &mut |d| seen += d.len());
            assert_eq!(seen, input.len());
            produced
        });
        let mut parts = Vec::new();
        while let Some(part) = rx.blocking_recv() {
            parts.push(part);
        }
        (producer.join().unwrap().unwrap(), parts)
    }

    #[test]
    fn parts_hash_and_sizes() {
        let input = noise(PART_SIZE * 2 + 5);
        let (produced, parts) = run(input.clone(), Compression::None);
        let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
        assert_eq!(sizes, [PART_SIZE, PART_SIZE, 5]);
        assert_eq!(produced.input_bytes, input.len() as u64);
        assert_eq!(produced.stored_bytes, input.len() as u64);
        assert_eq!(
            produced.sha256,
            crate::archive::checksum::sha256_hex(&input)
        );
    }

    #[test]
    fn compressed_parts_decompress_to_the_input() {
        let mut input = noise(PART_SIZE + 100);
        input.extend(std::iter::repeat_n(0u8, PART_SIZE));
        let (produced, parts) = run(input.clone(), Compression::Zstd);
        let stored: Vec<u8> = parts.concat();
        assert_eq!(produced.stored_bytes, stored.len() as u64);
        assert!(stored.len() < input.len());
        assert_eq!(
            produced.sha256,
            crate::archive::checksum::sha256_hex(&stored)
        );
        assert_eq!(zstd::stream::decode_all(&stored[..]).unwrap(), input);
    }

    #[test]
    fn a_stopped_upload_stops_the_producer() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let input = noise(PART_SIZE + 1);
        let err = produce(&input[..], Compression::None, tx, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("upload stopped"), "{err}");
    }

    #[test]
    fn empty_input_sends_no_part() {
        let (produced, parts) = run(Vec::new(), Compression::None);
        assert!(parts.is_empty());
        assert_eq!(produced.input_bytes, 0);
    }
}
