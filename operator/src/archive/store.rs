//! The bucket: HEAD, PUT and GET of WAL objects through `aws-sdk-s3`, each retried
//! with [`Backoff`] (the SDK's own retries are off, so the bound is ours alone).

use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    SharedHttpClient,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::checksum::METADATA_KEY;
use super::config::{ArchiveConfig, S3_CA_FILE};
use super::error::{ArchiveError, Result};
use super::retry::{with_retries, Backoff, Failure, GaveUp};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One attempt at one object (16 MiB at worst, usually far less once compressed).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);

/// An object found in the bucket: its content and its checksum metadata.
pub struct Fetched {
    pub body: Vec<u8>,
    pub sha256: Option<String>,
}

pub struct Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    backoff: Backoff,
}

impl Store {
    pub fn new(config: &ArchiveConfig) -> Result<Self> {
        let (key_id, secret) = config.credentials()?;
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&config.endpoint)
            .region(Region::new(config.region.clone()))
            .credentials_provider(Credentials::new(key_id, secret, None, None, "geodb"))
            .force_path_style(config.path_style)
            .http_client(http_client(config)?)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            )
            // Our own SHA-256 covers integrity; CRC trailers are not understood by every
            // S3-compatible server.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        Ok(Self {
            client: aws_sdk_s3::Client::from_conf(conf),
            bucket: config.bucket.clone(),
            backoff: Backoff::within(config.retry_timeout),
        })
    }

    /// The checksum metadata of `key`: `None` without such an object, `Some(None)` when
    /// it has no checksum.
    pub async fn head(&self, name: &str, key: &str) -> Result<Option<Option<String>>> {
        let result = with_retries(self.backoff, || async {
            let request = self.client.head_object().bucket(&self.bucket).key(key);
            match request.send().await {
                Ok(out) => Ok(Some(
                    out.metadata().and_then(|m| m.get(METADATA_KEY)).cloned(),
                )),
                Err(e) if status(&e) == Some(404) => Ok(None),
                Err(e) => Err(failure(&e)),
            }
        })
        .await;
        result.map_err(gave_up(name, "HEAD", key))
    }

    pub async fn put(&self, name: &str, key: &str, body: &[u8], sha256: &str) -> Result<()> {
        let result = with_retries(self.backoff, || async {
            let request = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_type("application/octet-stream")
                .metadata(METADATA_KEY, sha256)
                .body(ByteStream::from(body.to_vec()));
            request.send().await.map(|_| ()).map_err(|e| failure(&e))
        })
        .await;
        result.map_err(gave_up(name, "PUT", key))
    }

    /// `None` without such an object.
    pub async fn get(&self, name: &str, key: &str) -> Result<Option<Fetched>> {
        let result = with_retries(self.backoff, || async {
            let request = self.client.get_object().bucket(&self.bucket).key(key);
            let out = match request.send().await {
                Ok(out) => out,
                Err(e) if status(&e) == Some(404) => return Ok(None),
                Err(e) => return Err(failure(&e)),
            };
            let sha256 = out.metadata().and_then(|m| m.get(METADATA_KEY)).cloned();
            // A body cut short is a dropped connection: worth another attempt.
            let body = out.body.collect().await.map_err(|e| Failure {
                message: format!("reading the body: {e}"),
                transient: true,
            })?;
            Ok(Some(Fetched {
                body: body.into_bytes().to_vec(),
                sha256,
            }))
        })
        .await;
        result.map_err(gave_up(name, "GET", key))
    }
}

/// HTTPS with rustls on ring (already built for the Kubernetes client); plain HTTP
/// endpoints need no roots, a CA file replaces the system roots.
fn http_client(config: &ArchiveConfig) -> Result<SharedHttpClient> {
    let trust = match &config.ca_file {
        Some(path) => TrustStore::empty().with_pem_certificate(read_ca(path)?),
        None if config.endpoint.starts_with("http://") => TrustStore::empty(),
        None => TrustStore::default(),
    };
    let context = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| ArchiveError::Runtime(format!("TLS setup: {e}")))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .tls_context(context)
        .build_https())
}

/// The PEM bundle, checked here: the HTTP client would panic on a malformed one.
fn read_ca(path: &std::path::Path) -> Result<Vec<u8>> {
    let pem = std::fs::read(path).map_err(ArchiveError::io(path))?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>();
    match certs {
        Ok(certs) if !certs.is_empty() => Ok(pem),
        _ => Err(ArchiveError::InvalidEnv {
            var: S3_CA_FILE,
            reason: format!("{} holds no valid PEM certificate", path.display()),
        }),
    }
}

fn status<E>(err: &SdkError<E>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// Server errors, throttling and network trouble are worth retrying; other client errors
/// (bad credentials, no bucket) are not.
fn failure<E: ProvideErrorMetadata + std::error::Error + 'static>(err: &SdkError<E>) -> Failure {
    match err {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("no error code");
            let status = status(err).unwrap_or_default();
            Failure {
                message: format!("HTTP {status} {code}"),
                transient: is_transient_status(status),
            }
        }
        SdkError::ConstructionFailure(_) => Failure {
            message: DisplayErrorContext(err).to_string(),
            transient: false,
        },
        _ => Failure {
            message: DisplayErrorContext(err).to_string(),
            transient: true,
        },
    }
}

pub fn is_transient_status(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

fn gave_up<'a>(
    name: &'a str,
    operation: &'static str,
    key: &'a str,
) -> impl FnOnce(GaveUp) -> ArchiveError + 'a {
    move |GaveUp { failure, attempts }| ArchiveError::S3 {
        name: name.to_owned(),
        operation,
        key: key.to_owned(),
        message: format!("{} ({attempts} attempts)", failure.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_statuses_are_retried() {
        for s in [500, 502, 503, 504, 408, 429] {
            assert!(is_transient_status(s), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 412] {
            assert!(!is_transient_status(s), "{s}");
        }
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let path = std::env::temp_dir().join(format!("geodb-ca-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = read_ca(&path).unwrap_err().to_string();
        assert!(err.starts_with(S3_CA_FILE), "{err}");
        std::fs::remove_file(&path).unwrap();
    }
}
