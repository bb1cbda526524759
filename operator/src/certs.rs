//! Certificates of a GeoDatabase: a CA of its own (ECDSA P-256, ten years), and a server
//! certificate it signs for every name clients and instances use to reach the cluster
//! (one year, renewed 30 days before it ends or when the names change). The CA's key
//! stays in the operator's Secret; pods get the server key and the CA certificate only.
//!
//! A CA is rebuilt for signing from its stored key and its fixed parameters (same
//! subject, same key, so the same issuer), so the operator needs no certificate parser.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// How long a CA lives.
const CA_LIFETIME: Duration = Duration::days(3650);
/// How long a server certificate lives, and how long before its end it is replaced.
const SERVER_LIFETIME: Duration = Duration::days(365);
const RENEW_BEFORE: Duration = Duration::days(30);
/// Clocks of the pods may lag the operator's a little.
const BACKDATE: Duration = Duration::minutes(5);

#[derive(Debug, thiserror::Error)]
#[error("certificate: {0}")]
pub struct CertError(String);

impl From<rcgen::Error> for CertError {
    fn from(e: rcgen::Error) -> Self {
        Self(e.to_string())
    }
}

/// A certificate, its key (PKCS#8 PEM) and when it ends (Unix seconds).
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: i64,
}

impl std::fmt::Debug for Issued {
    // Keys never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Issued {{ not_after: {}, .. }}", self.not_after)
    }
}

fn ca_params(cluster: &str, namespace: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "geodb");
    dn.push(DnType::CommonName, format!("{namespace}/{cluster} CA"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

fn at(unix: i64) -> Result<OffsetDateTime, CertError> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(|e| CertError(e.to_string()))
}

/// A new CA for the GeoDatabase `namespace/cluster`, valid from `now` (Unix seconds).
pub fn new_ca(cluster: &str, namespace: &str, now: i64) -> Result<Issued, CertError> {
    let key = KeyPair::generate()?;
    let mut params = ca_params(cluster, namespace);
    params.not_before = at(now)? - BACKDATE;
    params.not_after = at(now)? + CA_LIFETIME;
    let not_after = params.not_after.unix_timestamp();
    let cert = params.self_signed(&key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after,
    })
}

/// A server certificate for `names` (DNS names), signed by `ca`.
pub fn issue_server(
    ca: &Issued,
    cluster: &str,
    namespace: &str,
    names: &[String],
    now: i64,
) -> Result<Issued, CertError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = ca_params(cluster, namespace).self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "geodb");
    dn.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Servers, and clients too: instances present it to one another for replication.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = at(now)? - BACKDATE;
    params.not_after = (at(now)? + SERVER_LIFETIME).min(at(ca.not_after)?);
    let not_after = params.not_after.unix_timestamp();
    let cert = params.signed_by(&key, &issuer, &ca_key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after,
    })
}

/// Whether a certificate ending at `not_after` must be replaced at `now`.
pub fn due(not_after: i64, now: i64) -> bool {
    now + RENEW_BEFORE.whole_seconds() >= not_after
}

/// Every name the server certificate holds: each of `hosts` (Service and instance
/// names) short, with the namespace, and in the cluster domain; and `localhost`.
pub fn server_names(hosts: &[String], namespace: &str) -> Vec<String> {
    let mut names: Vec<String> = hosts
        .iter()
        .flat_map(|h| {
            [
                h.clone(),
                format!("{h}.{namespace}"),
                format!("{h}.{namespace}.svc"),
                format!("{h}.{namespace}.svc.cluster.local"),
            ]
        })
        .collect();
    names.push("localhost".to_owned());
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_000_000;

    #[test]
    fn a_server_certificate_signed_by_a_rebuilt_ca() {
        let ca = new_ca("geo", "maps", NOW).unwrap();
        assert!(ca.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(ca.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(ca.not_after, NOW + CA_LIFETIME.whole_seconds());
        let names = server_names(&["geo-rw".to_owned(), "geo-1".to_owned()], "maps");
        assert!(names.contains(&"geo-rw.maps.svc".to_owned()));
        assert!(names.contains(&"geo-1.maps.svc.cluster.local".to_owned()));
        let server = issue_server(&ca, "geo", "maps", &names, NOW).unwrap();
        assert_eq!(server.not_after, NOW + SERVER_LIFETIME.whole_seconds());
        assert_ne!(server.key_pem, ca.key_pem);
        // Never beyond its CA.
        let late = issue_server(&ca, "geo", "maps", &names, ca.not_after - 10).unwrap();
        assert_eq!(late.not_after, ca.not_after);
        assert!(
            format!("{server:?}").contains("not_after")
                && !format!("{server:?}").contains("PRIVATE")
        );
    }

    /// The certificate chains to the CA as stored (not the rebuilt one that signed it),
    /// for the names, as OpenSSL (PostgreSQL's and libpq's TLS) checks it.
    #[test]
    fn openssl_verifies_the_chain_and_the_names() {
        let Ok(openssl) = which_openssl() else {
            eprintln!("SKIPPED: no openssl");
            return;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let ca = new_ca("geo", "maps", now).unwrap();
        let names = server_names(&["geo-rw".to_owned()], "maps");
        let server = issue_server(&ca, "geo", "maps", &names, now).unwrap();
        let dir = std::env::temp_dir().join(format!("geodb-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), &ca.cert_pem).unwrap();
        std::fs::write(dir.join("server.pem"), &server.cert_pem).unwrap();
        let verify = |host: &str| {
            std::process::Command::new(&openssl)
                .args(["verify", "-CAfile"])
                .arg(dir.join("ca.pem"))
                .args(["-verify_hostname", host])
                .arg(dir.join("server.pem"))
                .output()
                .unwrap()
        };
        let ok = verify("geo-rw.maps.svc");
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stdout)
        );
        assert!(!verify("other.maps.svc").status.success());
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn which_openssl() -> Result<std::path::PathBuf, ()> {
        ["/usr/bin/openssl", "/bin/openssl"]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.exists())
            .ok_or(())
    }

    #[test]
    fn renewal_thirty_days_ahead() {
        let end = NOW + SERVER_LIFETIME.whole_seconds();
        assert!(!due(end, NOW));
        assert!(!due(end, end - RENEW_BEFORE.whole_seconds() - 1));
        assert!(due(end, end - RENEW_BEFORE.whole_seconds()));
        assert!(due(end, end + 1));
    }
}
