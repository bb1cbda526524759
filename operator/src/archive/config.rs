//! The environment contract of `wal-push` and `wal-fetch`: every variable they read.
//! PostgreSQL runs both with its own environment, so the pod sets these on the
//! database container; the credentials are files (a mounted Secret), read at each call
//! so a rotated Secret takes effect without a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::{ArchiveError, Result};
use super::segment::Compression;

// The names are the pod contract's (the StatefulSet sets them); the two that only the
// tools read are here.
pub use crate::pod_contract::env::{
    PGDATA, S3_ACCESS_KEY_ID_FILE, S3_BUCKET, S3_CA_FILE, S3_ENDPOINT, S3_PATH_STYLE, S3_PREFIX,
    S3_REGION, S3_SECRET_ACCESS_KEY_FILE, WAL_COMPRESSION,
};
/// Optional: seconds one invocation keeps retrying a failing request (default 30).
pub const S3_RETRY_TIMEOUT_SECONDS: &str = "GEODB_S3_RETRY_TIMEOUT_SECONDS";
/// Directory for uploads done ahead of time and downloads prefetched.
pub const WAL_SPOOL: &str = "GEODB_WAL_SPOOL";

pub const DEFAULT_REGION: &str = "us-east-1";
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(30);
/// Name of the spool directory beside the data directory (outside it, so base backups
/// never copy it).
pub const SPOOL_DIR_NAME: &str = "geodb-wal-spool";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveConfig {
    pub endpoint: String,
    pub bucket: String,
    /// Without leading or trailing slashes; may be empty.
    pub prefix: String,
    pub region: String,
    pub path_style: bool,
    pub access_key_id_file: PathBuf,
    pub secret_access_key_file: PathBuf,
    pub ca_file: Option<PathBuf>,
    pub compression: Compression,
    pub spool_dir: PathBuf,
    pub retry_timeout: Duration,
}

impl ArchiveConfig {
    pub fn from_env() -> Result<Self> {
        let cwd = std::env::current_dir().map_err(ArchiveError::io(Path::new(".")))?;
        Self::from_lookup(|name| std::env::var(name).ok(), &cwd)
    }

    /// The configuration from any source of variables; `cwd` resolves a relative or
    /// missing `PGDATA`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>, cwd: &Path) -> Result<Self> {
        // An empty value counts as unset, as a blank field in a manifest would.
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let required = |name: &'static str| get(name).ok_or(ArchiveError::MissingEnv(name));
        let spool_dir = match get(WAL_SPOOL) {
            Some(dir) => cwd.join(dir),
            None => default_spool_dir(&cwd.join(get(PGDATA).unwrap_or_default())),
        };
        Ok(Self {
            endpoint: parse_endpoint(&required(S3_ENDPOINT)?)?,
            bucket: required(S3_BUCKET)?,
            prefix: normalize_prefix(&get(S3_PREFIX).unwrap_or_default()),
            region: get(S3_REGION).unwrap_or_else(|| DEFAULT_REGION.to_owned()),
            path_style: get(S3_PATH_STYLE).map_or(Ok(true), |v| parse_bool(S3_PATH_STYLE, &v))?,
            access_key_id_file: required(S3_ACCESS_KEY_ID_FILE)?.into(),
            secret_access_key_file: required(S3_SECRET_ACCESS_KEY_FILE)?.into(),
            ca_file: get(S3_CA_FILE).map(PathBuf::from),
            compression: get(WAL_COMPRESSION).map_or(Ok(Compression::Zstd), |v| {
                Compression::parse(&v).ok_or_else(|| ArchiveError::InvalidEnv {
                    var: WAL_COMPRESSION,
                    reason: format!("{v:?} is neither zstd nor none"),
                })
            })?,
            spool_dir,
            retry_timeout: get(S3_RETRY_TIMEOUT_SECONDS)
                .map_or(Ok(DEFAULT_RETRY_TIMEOUT), |v| parse_seconds(&v))?,
        })
    }

    /// The archive as one string (endpoint, bucket, prefix), recorded in the spool.
    pub fn origin(&self) -> String {
        format!("{}/{}/{}", self.endpoint, self.bucket, self.prefix)
    }

    /// Both halves of the key pair, read from their files now; errors name the file only.
    pub fn credentials(&self) -> Result<(String, String)> {
        Ok((
            read_secret(S3_ACCESS_KEY_ID_FILE, &self.access_key_id_file)?,
            read_secret(S3_SECRET_ACCESS_KEY_FILE, &self.secret_access_key_file)?,
        ))
    }
}

fn read_secret(var: &'static str, path: &Path) -> Result<String> {
    let value = std::fs::read_to_string(path).map_err(ArchiveError::io(path))?;
    let value = value.trim();
    if value.is_empty() {
        return Err(ArchiveError::InvalidEnv {
            var,
            reason: format!("{} is empty", path.display()),
        });
    }
    Ok(value.to_owned())
}

/// `<data directory's parent>/geodb-wal-spool`.
pub fn default_spool_dir(pgdata: &Path) -> PathBuf {
    pgdata.parent().unwrap_or(pgdata).join(SPOOL_DIR_NAME)
}

fn parse_endpoint(value: &str) -> Result<String> {
    let value = value.trim().trim_end_matches('/');
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => {
            Ok(value.to_owned())
        }
        _ => Err(ArchiveError::InvalidEnv {
            var: S3_ENDPOINT,
            reason: format!("{value:?} is not an http:// or https:// URL"),
        }),
    }
}

fn parse_bool(var: &'static str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(ArchiveError::InvalidEnv {
            var,
            reason: format!("{other:?} is neither true nor false"),
        }),
    }
}

fn parse_seconds(value: &str) -> Result<Duration> {
    value
        .trim()
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| ArchiveError::InvalidEnv {
            var: S3_RETRY_TIMEOUT_SECONDS,
            reason: format!("{value:?} is not a whole number of seconds"),
        })
}

fn normalize_prefix(prefix: &str) -> String {
    prefix
        .split('/')
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<ArchiveConfig> {
        let mut env: HashMap<String, String> = [
            (S3_ENDPOINT, "http://127.0.0.1:8333/"),
            (S3_BUCKET, "wal"),
            (S3_ACCESS_KEY_ID_FILE, "/s/id"),
            (S3_SECRET_ACCESS_KEY_FILE, "/s/secret"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in vars {
            env.insert(k.to_string(), v.to_string());
        }
        ArchiveConfig::from_lookup(|n| env.get(n).cloned(), Path::new("/var/lib/pg/data"))
    }

    #[test]
    fn defaults() {
        let c = config(&[]).unwrap();
        assert_eq!(c.endpoint, "http://127.0.0.1:8333");
        assert_eq!(c.region, DEFAULT_REGION);
        assert!(c.path_style);
        assert_eq!(c.compression, Compression::Zstd);
        assert_eq!(c.prefix, "");
        assert_eq!(c.ca_file, None);
        assert_eq!(c.retry_timeout, DEFAULT_RETRY_TIMEOUT);
        assert_eq!(c.origin(), "http://127.0.0.1:8333/wal/");
        // No PGDATA: the working directory is the data directory.
        assert_eq!(c.spool_dir, Path::new("/var/lib/pg/geodb-wal-spool"));
    }

    #[test]
    fn explicit_values() {
        let c = config(&[
            (S3_PREFIX, "/ns/name/"),
            (S3_PATH_STYLE, "False"),
            (WAL_COMPRESSION, "none"),
            (PGDATA, "/data/pgdata"),
            (S3_CA_FILE, "/s/ca.pem"),
            (S3_RETRY_TIMEOUT_SECONDS, "5"),
        ])
        .unwrap();
        assert_eq!(c.prefix, "ns/name");
        assert!(!c.path_style);
        assert_eq!(c.compression, Compression::None);
        assert_eq!(c.spool_dir, Path::new("/data/geodb-wal-spool"));
        assert_eq!(c.ca_file.as_deref(), Some(Path::new("/s/ca.pem")));
        assert_eq!(c.retry_timeout, Duration::from_secs(5));
        let c = config(&[(WAL_SPOOL, "/spool")]).unwrap();
        assert_eq!(c.spool_dir, Path::new("/spool"));
    }

    #[test]
    fn rejects_bad_values() {
        for (var, value) in [
            (S3_ENDPOINT, "ftp://x"),
            (S3_ENDPOINT, "http://"),
            (S3_PATH_STYLE, "yes"),
            (WAL_COMPRESSION, "gzip"),
            (S3_RETRY_TIMEOUT_SECONDS, "soon"),
        ] {
            let err = config(&[(var, value)]).unwrap_err();
            assert!(err.to_string().starts_with(var), "{err}");
        }
        let err = config(&[(S3_BUCKET, " ")]).unwrap_err();
        assert_eq!(err.to_string(), "GEODB_S3_BUCKET is not set");
    }

    #[test]
    fn credentials_are_trimmed_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("geodb-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("id"), "AKID\n").unwrap();
        std::fs::write(dir.join("secret"), "  \n").unwrap();
        let mut c = config(&[]).unwrap();
        c.access_key_id_file = dir.join("id");
        c.secret_access_key_file = dir.join("secret");
        let err = c.credentials().unwrap_err().to_string();
        assert!(err.contains("is empty") && !err.contains("AKID"), "{err}");
        std::fs::write(dir.join("secret"), "s3cr3t\n").unwrap();
        assert_eq!(c.credentials().unwrap(), ("AKID".into(), "s3cr3t".into()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
