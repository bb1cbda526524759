//! The bucket: HEAD, PUT and GET of WAL objects, and for base backups LIST, DELETE,
//! streaming GET and multipart uploads, through `aws-sdk-s3`, each request retried with
//! [`Backoff`] (the SDK's own retries are off, so the bound is ours alone).

use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    SharedHttpClient,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, SdkBody};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
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

/// One object of a listing; `last_modified` in seconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    pub last_modified: Option<i64>,
}

pub struct Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    backoff: Backoff,
}

/// An access key and CA held in memory (the operator reads them from Secrets; the
/// commands in pods read mounted files).
pub struct Inline {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub ca_pem: Option<Vec<u8>>,
}

impl Store {
    pub fn new(config: &ArchiveConfig) -> Result<Self> {
        let (key_id, secret) = config.credentials()?;
        let ca = config.ca_file.as_deref().map(read_ca).transpose()?;
        Self::build(config, key_id, secret, ca)
    }

    /// A store whose key and CA come from memory, not files.
    pub fn with_inline(config: &ArchiveConfig, inline: &Inline) -> Result<Self> {
        let ca = inline
            .ca_pem
            .as_deref()
            .map(|pem| check_ca(pem, "the CA bundle"))
            .transpose()?;
        Self::build(
            config,
            inline.access_key_id.clone(),
            inline.secret_access_key.clone(),
            ca,
        )
    }

    fn build(
        config: &ArchiveConfig,
        key_id: String,
        secret: String,
        ca: Option<Vec<u8>>,
    ) -> Result<Self> {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&config.endpoint)
            .region(Region::new(config.region.clone()))
            .credentials_provider(Credentials::new(key_id, secret, None, None, "geodb"))
            .force_path_style(config.path_style)
            .http_client(http_client(config, ca)?)
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

impl Store {
    /// Every object under `prefix`, page after page (each page retried on its own).
    pub async fn list(&self, name: &str, prefix: &str) -> Result<Vec<Listed>> {
        let mut listed = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let result = with_retries(self.backoff, || async {
                let request = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(prefix)
                    .set_continuation_token(token.clone());
                request.send().await.map_err(|e| failure(&e))
            })
            .await;
            let page = result.map_err(gave_up(name, "LIST", prefix))?;
            listed.extend(page.contents().iter().filter_map(|object| {
                Some(Listed {
                    key: object.key()?.to_owned(),
                    size: u64::try_from(object.size().unwrap_or_default()).unwrap_or_default(),
                    last_modified: object.last_modified().map(|t| t.secs()),
                })
            }));
            token = page.next_continuation_token().map(str::to_owned);
            if page.is_truncated() != Some(true) || token.is_none() {
                return Ok(listed);
            }
        }
    }

    /// Deleting what is not there is a success (a retry after a lost answer).
    pub async fn delete(&self, name: &str, key: &str) -> Result<()> {
        let result = with_retries(self.backoff, || async {
            let request = self.client.delete_object().bucket(&self.bucket).key(key);
            match request.send().await {
                Ok(_) => Ok(()),
                Err(e) if status(&e) == Some(404) => Ok(()),
                Err(e) => Err(failure(&e)),
            }
        })
        .await;
        result.map_err(gave_up(name, "DELETE", key))
    }

    /// The body as a stream, never held whole; `None` without such an object. Only the
    /// request is retried: a body cut short fails the caller, who started consuming it.
    pub async fn get_stream(&self, name: &str, key: &str) -> Result<Option<ByteStream>> {
        let result = with_retries(self.backoff, || async {
            let request = self.client.get_object().bucket(&self.bucket).key(key);
            match request.send().await {
                Ok(out) => Ok(Some(out.body)),
                Err(e) if status(&e) == Some(404) => Ok(None),
                Err(e) => Err(failure(&e)),
            }
        })
        .await;
        result.map_err(gave_up(name, "GET", key))
    }

    /// A new multipart upload to `key`; its id.
    pub async fn create_multipart(&self, name: &str, key: &str) -> Result<String> {
        let result = with_retries(self.backoff, || async {
            let request = self
                .client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .content_type("application/octet-stream");
            let out = request.send().await.map_err(|e| failure(&e))?;
            out.upload_id().map(str::to_owned).ok_or_else(|| Failure {
                message: "no upload id in the answer".to_owned(),
                transient: false,
            })
        })
        .await;
        result.map_err(gave_up(name, "CreateMultipartUpload", key))
    }

    /// Part `number` (from 1) of an upload; its ETag. `body` is in memory, so each
    /// attempt resends it without a copy.
    pub async fn upload_part(
        &self,
        name: &str,
        key: &str,
        upload_id: &str,
        number: i32,
        body: &SdkBody,
    ) -> Result<String> {
        let result = with_retries(self.backoff, || async {
            let body = body.try_clone().ok_or_else(|| Failure {
                message: "the part's body cannot be resent".to_owned(),
                transient: false,
            })?;
            let request = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(body));
            let out = request.send().await.map_err(|e| failure(&e))?;
            out.e_tag().map(str::to_owned).ok_or_else(|| Failure {
                message: "no ETag in the answer".to_owned(),
                transient: false,
            })
        })
        .await;
        let operation = "UploadPart";
        result.map_err(gave_up(name, operation, &format!("{key} (part {number})")))
    }

    /// Join the parts, whose ETags are given in order from part 1.
    pub async fn complete_multipart(
        &self,
        name: &str,
        key: &str,
        upload_id: &str,
        etags: &[String],
    ) -> Result<()> {
        let parts: Vec<CompletedPart> = (1..)
            .zip(etags)
            .map(|(number, etag)| {
                CompletedPart::builder()
                    .part_number(number)
                    .e_tag(etag)
                    .build()
            })
            .collect();
        let upload = CompletedMultipartUpload::builder()
            .set_parts(Some(parts))
            .build();
        let result = with_retries(self.backoff, || async {
            let request = self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .multipart_upload(upload.clone());
            request.send().await.map(|_| ()).map_err(|e| failure(&e))
        })
        .await;
        result.map_err(gave_up(name, "CompleteMultipartUpload", key))
    }

    /// Drop an upload's parts (an upload already gone is a success).
    pub async fn abort_multipart(&self, name: &str, key: &str, upload_id: &str) -> Result<()> {
        let result = with_retries(self.backoff, || async {
            let request = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id);
            match request.send().await {
                Ok(_) => Ok(()),
                Err(e) if status(&e) == Some(404) => Ok(()),
                Err(e) => Err(failure(&e)),
            }
        })
        .await;
        result.map_err(gave_up(name, "AbortMultipartUpload", key))
    }
}

/// HTTPS with rustls on ring (already built for the Kubernetes client); plain HTTP
/// endpoints need no roots, a CA file replaces the system roots.
fn http_client(config: &ArchiveConfig, ca: Option<Vec<u8>>) -> Result<SharedHttpClient> {
    let trust = match ca {
        Some(pem) => TrustStore::empty().with_pem_certificate(pem),
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
    check_ca(&pem, &path.display().to_string())
}

fn check_ca(pem: &[u8], what: &str) -> Result<Vec<u8>> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>();
    match certs {
        Ok(certs) if !certs.is_empty() => Ok(pem.to_vec()),
        _ => Err(ArchiveError::InvalidEnv {
            var: S3_CA_FILE,
            reason: format!("{what} holds no valid PEM certificate"),
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
