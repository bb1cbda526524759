//! What a PostgreSQL or PgBouncer port serves over TLS: the certificate it presents
//! after the protocol's SSLRequest, checked against the cluster's CA and a name.

use std::sync::Arc;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// The PostgreSQL protocol's SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// The DER of the leaf certificate served at `address:port` for `name`, verified against
/// `ca_pem` (an error when the chain or the name does not check out).
pub async fn served_certificate(
    address: &str,
    port: u16,
    name: &str,
    ca_pem: &str,
) -> anyhow::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect((address, port)).await?;
    tcp.write_all(&SSL_REQUEST).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    anyhow::ensure!(
        answer[0] == b'S',
        "{address}:{port} answered {:?} to SSLRequest",
        answer[0] as char
    );
    let config = geodb::postgres::tls::client_config(ca_pem).map_err(anyhow::Error::msg)?;
    let server_name = ServerName::try_from(name.to_owned())?;
    let tls = TlsConnector::from(Arc::clone(&config))
        .connect(server_name, tcp)
        .await
        .with_context(|| format!("TLS handshake with {address}:{port} as {name}"))?;
    let (_, session) = tls.get_ref();
    let leaf = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .context("no certificate served")?;
    Ok(leaf.as_ref().to_vec())
}

/// The error a plaintext login to `address:port` gets (None when it is let in).
pub async fn plaintext_refusal(
    address: &str,
    port: u16,
    user: &str,
    password: &str,
    dbname: &str,
) -> Option<String> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(address)
        .port(port)
        .user(user)
        .password(password)
        .dbname(dbname)
        .ssl_mode(tokio_postgres::config::SslMode::Disable)
        .connect_timeout(std::time::Duration::from_secs(5));
    match config.connect(tokio_postgres::NoTls).await {
        Ok(_) => None,
        Err(e) => Some(
            e.as_db_error()
                .map(|db| db.message().to_owned())
                .unwrap_or_else(|| e.to_string()),
        ),
    }
}
