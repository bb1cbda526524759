//! Unpack a base backup into a new data directory: the object streams from S3 through
//! zstd into the system `tar`, never whole in memory or on disk; its checksum and sizes
//! are checked against the manifest at the end.

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;

use crate::archive::config::ArchiveConfig;
use crate::archive::segment::Compression;
use crate::archive::store::Store;
use aws_sdk_s3::primitives::ByteStream;

use super::error::{BackupError, Result};
use super::manifest::Manifest;
use super::pipe::last_line;
use super::upload::hex;

/// Chunks of the download waiting for the unpacker.
const QUEUE: usize = 16;

/// What the unpacker saw.
pub(crate) struct Unpacked {
    pub stored_bytes: u64,
    /// Bytes after decompression.
    pub tar_bytes: u64,
    pub sha256: String,
}

/// Into `pgdata`, created with mode 0700; it must be missing or empty. On an error
/// the directory holds a partial copy and is not usable.
pub async fn restore(config: &ArchiveConfig, manifest: &Manifest, pgdata: &Path) -> Result<()> {
    let id = manifest.id.as_str();
    let failed = BackupError::restore(id);
    prepare(pgdata)?;
    let store = Store::new(config)?;
    let key = manifest.data_key(&config.prefix);
    let Some(mut body) = store.get_stream(id, &key).await? else {
        return Err(failed(format!("{key} is not in the bucket")));
    };
    let mut tar = tokio::process::Command::new("tar")
        .arg("-x")
        .arg("-f")
        .arg("-")
        .arg("-C")
        .arg(pgdata)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BackupError::restore(id)(format!("starting tar: {e}")))?;
    let stdin = tar.stdin.take().map(|s| s.into_owned_fd());
    let (Some(Ok(stdin)), Some(mut stderr)) = (stdin, tar.stderr.take()) else {
        let _ = tar.start_kill();
        return Err(BackupError::restore(id)("tar has no pipes".to_owned()));
    };
    let stderr_task = tokio::spawn(async move {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text).await;
        String::from_utf8_lossy(&text).into_owned()
    });
    let (download, unpacked) = download(
        &mut body,
        &key,
        manifest.compression,
        std::fs::File::from(stdin),
    )
    .await;
    if download.is_err() || unpacked.is_err() {
        let _ = tar.start_kill();
    }
    let status = tar.wait().await;
    let stderr = stderr_task.await.unwrap_or_default();
    download.map_err(BackupError::restore(id))?;
    let status = status.map_err(|e| BackupError::restore(id)(format!("tar: {e}")))?;
    if !status.success() {
        return Err(failed(format!("tar {status}: {}", last_line(&stderr))));
    }
    let unpacked = unpacked.map_err(|e| BackupError::restore(id)(format!("unpacking: {e}")))?;
    verify(manifest, &unpacked).map_err(BackupError::restore(id))?;
    // tar may have applied a mode from the archive.
    std::fs::set_permissions(pgdata, std::fs::Permissions::from_mode(0o700))
        .map_err(BackupError::io(pgdata))
}

/// Stream `body` (the object at `key`) through [`unpack`] into `out`: whether the
/// download finished, and what was unpacked.
pub(crate) async fn download(
    body: &mut ByteStream,
    key: &str,
    compression: Compression,
    out: std::fs::File,
) -> (std::result::Result<(), String>, io::Result<Unpacked>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let unpacker = tokio::task::spawn_blocking(move || unpack(rx, compression, out));
    let mut download = Ok(());
    loop {
        match body.try_next().await {
            Ok(Some(chunk)) => {
                // A closed queue: the unpacker failed, and says why.
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                download = Err(format!("reading {key}: {e}"));
                break;
            }
        }
    }
    drop(tx);
    let unpacked = unpacker
        .await
        .map_err(|e| io::Error::other(e.to_string()))
        .and_then(|r| r);
    (download, unpacked)
}

/// A missing directory is created (mode 0700); an existing one must be empty.
fn prepare(pgdata: &Path) -> Result<()> {
    match std::fs::read_dir(pgdata) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::io(pgdata)(io::Error::other(
                    "not empty; refusing to restore over it",
                )));
            }
            std::fs::set_permissions(pgdata, std::fs::Permissions::from_mode(0o700))
                .map_err(BackupError::io(pgdata))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(pgdata)
            .map_err(BackupError::io(pgdata)),
        Err(e) => Err(BackupError::io(pgdata)(e)),
    }
}

/// Blocking: hash and count the stored bytes, decompress them into `out` (tar's stdin).
fn unpack<B: AsRef<[u8]>>(
    mut chunks: mpsc::Receiver<B>,
    compression: Compression,
    out: std::fs::File,
) -> io::Result<Unpacked> {
    let mut sha256 = ring::digest::Context::new(&ring::digest::SHA256);
    let mut stored_bytes = 0u64;
    let mut counted = Counting { inner: out, n: 0 };
    let mut feed = |writer: &mut dyn Write| -> io::Result<()> {
        while let Some(chunk) = chunks.blocking_recv() {
            let chunk = chunk.as_ref();
            sha256.update(chunk);
            stored_bytes += chunk.len() as u64;
            writer.write_all(chunk)?;
        }
        writer.flush()
    };
    match compression {
        Compression::Zstd => {
            let mut decoder = zstd::stream::write::Decoder::new(&mut counted)?;
            feed(&mut decoder)?;
        }
        Compression::None => feed(&mut counted)?,
    }
    Ok(Unpacked {
        stored_bytes,
        tar_bytes: counted.n,
        sha256: hex(sha256.finish().as_ref()),
    })
}

struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.n += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn verify(manifest: &Manifest, got: &Unpacked) -> std::result::Result<(), String> {
    if !got.sha256.eq_ignore_ascii_case(&manifest.sha256) {
        return Err(format!(
            "checksum mismatch: the manifest says sha256 {}, the object has {}",
            manifest.sha256, got.sha256
        ));
    }
    if got.stored_bytes != manifest.stored_bytes || got.tar_bytes != manifest.size_bytes {
        return Err(format!(
            "size mismatch: the manifest says {} stored and {} unpacked bytes, got {} and {}",
            manifest.stored_bytes, manifest.size_bytes, got.stored_bytes, got.tar_bytes
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::manifest::sample;

    fn unpack_bytes(stored: Vec<u8>, compression: Compression) -> (Unpacked, Vec<u8>) {
        let dir = std::env::temp_dir().join(format!(
            "geodb-unpack-{}-{compression:?}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out");
        let out = std::fs::File::create(&path).unwrap();
        let (tx, rx) = mpsc::channel(2);
        let worker = std::thread::spawn(move || unpack(rx, compression, out));
        for chunk in stored.chunks(1000) {
            tx.blocking_send(chunk.to_vec()).unwrap();
        }
        drop(tx);
        let unpacked = worker.join().unwrap().unwrap();
        let content = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        (unpacked, content)
    }

    #[test]
    fn unpacks_counts_and_hashes() {
        let tar: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let stored = zstd::stream::encode_all(&tar[..], 1).unwrap();
        let (got, content) = unpack_bytes(stored.clone(), Compression::Zstd);
        assert_eq!(content, tar);
        assert_eq!(got.tar_bytes, tar.len() as u64);
        assert_eq!(got.stored_bytes, stored.len() as u64);
        let sha = crate::archive::checksum::sha256_hex(&stored);
        assert_eq!(got.sha256, sha);
        let (got, content) = unpack_bytes(tar.clone(), Compression::None);
        assert_eq!(
            (content.len(), got.tar_bytes),
            (tar.len(), tar.len() as u64)
        );

        let manifest = Manifest {
            sha256: sha,
            stored_bytes: stored.len() as u64,
            size_bytes: tar.len() as u64,
            ..sample()
        };
        let (got, _) = unpack_bytes(stored, Compression::Zstd);
        verify(&manifest, &got).unwrap();
        let short = Manifest {
            size_bytes: 1,
            ..manifest.clone()
        };
        assert!(verify(&short, &got).unwrap_err().contains("size mismatch"));
        let other = Manifest {
            sha256: "00".repeat(32),
            ..manifest
        };
        assert!(verify(&other, &got)
            .unwrap_err()
            .contains("checksum mismatch"));
    }

    #[test]
    fn refuses_a_non_empty_directory() {
        let dir = std::env::temp_dir().join(format!("geodb-pgdata-{}", std::process::id()));
        let pgdata = dir.join("a/b");
        prepare(&pgdata).unwrap();
        let mode = std::fs::metadata(&pgdata).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        prepare(&pgdata).unwrap();
        std::fs::write(pgdata.join("PG_VERSION"), "15\n").unwrap();
        let err = prepare(&pgdata).unwrap_err().to_string();
        assert!(err.contains("not empty"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
