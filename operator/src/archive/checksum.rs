//! SHA-256 of the uncompressed content, stored as object metadata, and what an
//! existing object's checksum means for a push or a fetch.

use super::error::{ArchiveError, Result};

/// User metadata key (sent as `x-amz-meta-sha256`).
pub const METADATA_KEY: &str = "sha256";

/// ring's SHA-256 (assembly, so fast in debug builds too: 16 MiB in milliseconds).
pub fn sha256_hex(data: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut hex = String::with_capacity(64);
    for byte in digest.as_ref() {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// What a push does, given the checksum of what the archive already holds there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushDecision {
    Upload,
    /// The same content is archived already: a retry after a lost acknowledgement.
    AlreadyArchived,
    /// Other content under the same name: never overwrite it (two clusters writing one
    /// prefix, or a timeline mix-up).
    Conflict {
        remote: String,
    },
}

/// `remote` is `None` when there is no object, `Some(None)` when it has no checksum.
pub fn push_decision(remote: Option<Option<&str>>, local: &str) -> PushDecision {
    match remote {
        None => PushDecision::Upload,
        Some(Some(sum)) if sum.eq_ignore_ascii_case(local) => PushDecision::AlreadyArchived,
        Some(Some(sum)) => PushDecision::Conflict {
            remote: sum.to_owned(),
        },
        // Written by something else: its content cannot be compared, so it is not ours.
        Some(None) => PushDecision::Conflict {
            remote: "(none)".to_owned(),
        },
    }
}

/// Check fetched, uncompressed `content` against the object's metadata; its checksum.
pub fn verify(name: &str, key: &str, expected: Option<&str>, content: &[u8]) -> Result<String> {
    let Some(expected) = expected else {
        return Err(ArchiveError::MissingChecksum {
            name: name.to_owned(),
            key: key.to_owned(),
        });
    };
    let actual = sha256_hex(content);
    if actual.eq_ignore_ascii_case(expected.trim()) {
        Ok(actual)
    } else {
        Err(ArchiveError::ChecksumMismatch {
            name: name.to_owned(),
            key: key.to_owned(),
            expected: expected.to_owned(),
            actual,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(sha256_hex(b"abc"), ABC);
    }

    #[test]
    fn push_decisions() {
        assert_eq!(push_decision(None, ABC), PushDecision::Upload);
        assert_eq!(
            push_decision(Some(Some(&ABC.to_uppercase())), ABC),
            PushDecision::AlreadyArchived
        );
        assert_eq!(
            push_decision(Some(Some("00")), ABC),
            PushDecision::Conflict {
                remote: "00".into()
            }
        );
        assert!(matches!(
            push_decision(Some(None), ABC),
            PushDecision::Conflict { .. }
        ));
    }

    #[test]
    fn verification() {
        verify("n", "k", Some(ABC), b"abc").unwrap();
        let err = verify("n", "k", Some(ABC), b"abd").unwrap_err().to_string();
        assert!(
            err.contains("checksum mismatch") && err.starts_with("n:"),
            "{err}"
        );
        let err = verify("n", "k", None, b"abc").unwrap_err().to_string();
        assert!(err.contains("no sha256 metadata"), "{err}");
    }
}
