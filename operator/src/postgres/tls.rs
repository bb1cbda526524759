//! TLS for tokio-postgres on rustls (ring, already built for the Kubernetes client):
//! every connection verifies the server's chain against one GeoDatabase's CA and its
//! name (libpq's `verify-full`). The address dialled may be an IP while the name
//! verified is a DNS name (`Config::hostaddr` with `Config::host`), so the operator
//! reaches pods by IP from outside cluster DNS and still checks who answers.
//!
//! SCRAM gets `tls-server-end-point` channel binding from the server certificate, so a
//! proxy holding another certificate cannot relay the login.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, RootCertStore};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// A client configuration that trusts only the CA certificates in `ca_pem`.
pub fn client_config(ca_pem: &str) -> Result<Arc<ClientConfig>, String> {
    let roots = roots(ca_pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn roots(ca_pem: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("CA certificate: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("CA certificate: no certificate in the PEM".into());
    }
    Ok(roots)
}

/// Whether the chain in `cert_pem` (the server's certificate, then intermediates) is
/// one a `verify-full` client trusting `ca_pem` accepts at `now` for each of `names`:
/// the first refusal, naming the name. With `any_time`, a chain outside its validity
/// period at `now` passes (its names and signatures are what is judged).
pub fn check_served(
    ca_pem: &str,
    cert_pem: &str,
    names: &[String],
    now: UnixTime,
    any_time: bool,
) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider)
        .build()
        .map_err(|e| e.to_string())?;
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or("certificate: no certificate in the PEM")?;
    for name in names {
        let server = ServerName::try_from(name.clone()).map_err(|e| format!("{name}: {e}"))?;
        match verifier.verify_server_cert(leaf, intermediates, &server, &[], now) {
            Ok(_) => {}
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired
                | rustls::CertificateError::ExpiredContext { .. }
                | rustls::CertificateError::NotValidYet
                | rustls::CertificateError::NotValidYetContext { .. },
            )) if any_time => {}
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => return Err(format!("not valid for {name}: the name is not in it")),
            Err(e) => return Err(format!("not valid for {name}: {e}")),
        }
    }
    Ok(())
}

/// `verify-full` for tokio-postgres: the name checked is the connection's host.
#[derive(Clone)]
pub struct VerifyFull(pub Arc<ClientConfig>);

impl<S> MakeTlsConnect<S> for VerifyFull
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type TlsConnect = Connect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<Connect> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Connect {
            config: self.0.clone(),
            name,
        })
    }
}

pub struct Connect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

type Handshake<S> = Pin<Box<dyn Future<Output = io::Result<Stream<S>>> + Send>>;

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type Error = io::Error;
    type Future = Handshake<S>;

    fn connect(self, stream: S) -> Handshake<S> {
        Box::pin(async move {
            let connector = tokio_rustls::TlsConnector::from(self.config);
            let tls = connector.connect(self.name, stream).await?;
            Ok(Stream(tls))
        })
    }
}

pub struct Stream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> TlsStream for Stream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn channel_binding(&self) -> ChannelBinding {
        // The server's certificates are signed with ECDSA-SHA256 or RSA-SHA256: the
        // end-point hash is SHA-256 (RFC 5929 section 4.1).
        match self.0.get_ref().1.peer_certificates() {
            Some([leaf, ..]) => {
                ChannelBinding::tls_server_end_point(Sha256::digest(leaf.as_ref()).to_vec())
            }
            _ => ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusts_only_a_ca_it_can_read() {
        let ca = crate::certs::new_ca("geo", "maps", 1_796_000_000).unwrap();
        assert!(client_config(&ca.cert_pem).is_ok());
        assert!(client_config("").is_err());
        assert!(client_config(
            "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
        )
        .is_err());
    }

    #[test]
    fn a_served_chain_is_checked_for_every_name() {
        let now = 1_796_000_000;
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now as u64 + 60));
        let ca = crate::certs::new_ca("geo", "maps", now).unwrap();
        let names = vec!["geo-rw".to_owned(), "geo-1".to_owned()];
        let hosts = crate::certs::server_names(&names, "maps");
        let server = crate::certs::issue_server(&ca, "geo", "maps", &hosts, now).unwrap();
        let wanted = ["geo-rw.maps.svc".to_owned(), "geo-1.maps.svc".to_owned()];
        assert_eq!(
            check_served(&ca.cert_pem, &server.cert_pem, &wanted, at, false),
            Ok(())
        );
        let missing = check_served(
            &ca.cert_pem,
            &server.cert_pem,
            &["geo-2.maps.svc".into()],
            at,
            true,
        );
        assert!(missing.unwrap_err().contains("geo-2.maps.svc"));
        let other = crate::certs::new_ca("geo", "maps", now).unwrap();
        assert!(check_served(&other.cert_pem, &server.cert_pem, &wanted, at, true).is_err());
        let later =
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(now as u64 + 400 * 86_400));
        assert!(check_served(&ca.cert_pem, &server.cert_pem, &wanted, later, false).is_err());
        // Expired is for the renewer to fix, not a reason to stop reconciling.
        assert!(check_served(&ca.cert_pem, &server.cert_pem, &wanted, later, true).is_ok());
    }
}
