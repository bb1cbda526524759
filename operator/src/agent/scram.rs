//! Whether a stored SCRAM-SHA-256 verifier is of a given password. Setting a password
//! again makes a new salt, and with it a verifier that differs; PgBouncer holds the keys
//! of clients that logged in against the old one (SCRAM pass-through), so every new
//! server login of theirs would fail. A password that already matches is left alone.

use std::num::NonZeroU32;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Whether `verifier` (`pg_authid.rolpassword`: `SCRAM-SHA-256$<iterations>:<salt>$
/// <StoredKey>:<ServerKey>`) was made from `password` (pure).
pub fn verifies(verifier: &str, password: &str) -> bool {
    let parts = verifier
        .strip_prefix("SCRAM-SHA-256$")
        .and_then(|rest| rest.split_once('$'))
        .and_then(|(head, keys)| Some((head.split_once(':')?, keys.split_once(':')?)));
    let Some(((iterations, salt), (stored, server))) = parts else {
        return false;
    };
    let (Ok(iterations), Ok(salt)) = (iterations.parse::<NonZeroU32>(), STANDARD.decode(salt))
    else {
        return false;
    };
    let mut salted = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        password.as_bytes(),
        &mut salted,
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &salted);
    let client_key = ring::hmac::sign(&key, b"Client Key");
    let stored_key = ring::digest::digest(&ring::digest::SHA256, client_key.as_ref());
    let server_key = ring::hmac::sign(&key, b"Server Key");
    STANDARD.encode(stored_key.as_ref()) == stored && STANDARD.encode(server_key.as_ref()) == server
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verifier_matches_its_password_only() {
        let verifier = postgres_protocol::password::scram_sha_256(b"s3cret-Pass");
        assert!(verifies(&verifier, "s3cret-Pass"));
        assert!(!verifies(&verifier, "s3cret-pass"));
        assert!(!verifies("md5abcdef", "s3cret-Pass"));
        assert!(!verifies("SCRAM-SHA-256$x:y$z", "s3cret-Pass"));
        assert!(!verifies("", ""));
    }
}
