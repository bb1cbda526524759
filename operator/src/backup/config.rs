//! The environment of `geodb backup` beyond the S3 settings (which are wal-push's,
//! from [`ArchiveConfig`](crate::archive::ArchiveConfig)), and the private passfile it
//! hands to `pg_basebackup`.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::error::{BackupError, Result};
use crate::archive::ArchiveError;

// The names are the pod contract's (the backup Job sets them).
pub use crate::pod_contract::env::{
    BACKUP_HOST as HOST, BACKUP_PASSWORD_FILE as PASSWORD_FILE, BACKUP_PORT as PORT,
    BACKUP_RETENTION_COUNT as RETENTION_COUNT, BACKUP_RETENTION_WINDOW as RETENTION_WINDOW,
    BACKUP_USER as USER, BACKUP_WAL_WAIT_SECONDS as WAL_WAIT_SECONDS,
};
/// Optional: PostgreSQL's programs (`pg_basebackup`); found as the agent finds them
/// when unset.
pub const PG_BIN: &str = "GEODB_PG_BIN";

pub const DEFAULT_PORT: u16 = 5432;
pub const DEFAULT_WAL_WAIT: Duration = Duration::from_secs(300);
/// Where PostgreSQL's programs are when neither `GEODB_PG_BIN` nor a search finds them.
pub const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Which base backups are kept (the command's settings; `retention` plans from them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep what a restore to any point of the last `window` needs.
    pub window: Option<Duration>,
    /// Keep the newest `count` backups.
    pub count: Option<u32>,
}

impl Retention {
    pub fn is_set(&self) -> bool {
        self.window.is_some() || self.count.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupConfig {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password_file: PathBuf,
    pub wal_wait: Duration,
    pub retention: Retention,
    pub pg_bin: PathBuf,
}

impl BackupConfig {
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        // An empty value counts as unset, as in the archive's settings.
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let required = |name: &'static str| {
            get(name).ok_or(BackupError::Archive(ArchiveError::MissingEnv(name)))
        };
        let invalid = BackupError::invalid_env;
        let port = match get(PORT) {
            None => DEFAULT_PORT,
            Some(v) => v
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| invalid(PORT, format!("{v:?} is not a port number")))?,
        };
        let wal_wait = match get(WAL_WAIT_SECONDS) {
            None => DEFAULT_WAL_WAIT,
            Some(v) => v
                .trim()
                .parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|_| {
                    invalid(
                        WAL_WAIT_SECONDS,
                        format!("{v:?} is not a whole number of seconds"),
                    )
                })?,
        };
        let window = match get(RETENTION_WINDOW) {
            None => None,
            Some(v) => Some(parse_window(&v).ok_or_else(|| {
                invalid(
                    RETENTION_WINDOW,
                    format!("{v:?} is not a duration like 7d, 12h, 30m or 90s"),
                )
            })?),
        };
        let count = match get(RETENTION_COUNT) {
            None => None,
            Some(v) => Some(
                v.trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| invalid(RETENTION_COUNT, format!("{v:?} is not 1 or more")))?,
            ),
        };
        Ok(Self {
            host: required(HOST)?.trim().to_owned(),
            port,
            user: required(USER)?.trim().to_owned(),
            password_file: required(PASSWORD_FILE)?.into(),
            wal_wait,
            retention: Retention { window, count },
            pg_bin: get(PG_BIN).map(PathBuf::from).unwrap_or_else(|| {
                crate::postgres::programs::bin_dir().unwrap_or_else(|| DEFAULT_PG_BIN.into())
            }),
        })
    }
}

/// `7d`, `12h`, `30m`, `90s`: a positive whole number and one unit.
pub fn parse_window(text: &str) -> Option<Duration> {
    let text = text.trim();
    let unit = text.chars().last()?;
    let factor = match unit {
        'd' => 86_400,
        'h' => 3_600,
        'm' => 60,
        's' => 1,
        _ => return None,
    };
    let number = &text[..text.len() - 1];
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs = number.parse::<u64>().ok()?.checked_mul(factor)?;
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// A libpq password file in a fresh private directory, removed on drop: the password
/// reaches `pg_basebackup` neither in its arguments nor in its environment.
pub struct Passfile {
    dir: PathBuf,
    path: PathBuf,
}

impl Passfile {
    /// From the password in `password_file` (a trailing newline is not part of it).
    pub fn write(password_file: &Path) -> Result<Self> {
        let password =
            std::fs::read_to_string(password_file).map_err(BackupError::io(password_file))?;
        let password = password.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            return Err(BackupError::invalid_env(
                PASSWORD_FILE,
                format!("{} is empty", password_file.display()),
            ));
        }
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "geodb-backup-{}-{n}-{}",
            std::process::id(),
            super::time::now_secs()
        ));
        // `create`, not `create_all`: a directory someone prepared is refused.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(BackupError::io(&dir))?;
        let passfile = Passfile {
            path: dir.join("pgpass"),
            dir,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&passfile.path)
            .map_err(BackupError::io(&passfile.path))?;
        file.write_all(passfile_line(password).as_bytes())
            .map_err(BackupError::io(&passfile.path))?;
        Ok(passfile)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Passfile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Any host, port, database and user: the file serves one connection only.
pub fn passfile_line(password: &str) -> String {
    let escaped = password.replace('\\', "\\\\").replace(':', "\\:");
    format!("*:*:*:*:{escaped}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<BackupConfig> {
        let mut env: HashMap<String, String> = [
            (HOST, "db-0.db"),
            (USER, "streaming_replica"),
            (PASSWORD_FILE, "/s/password"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in vars {
            env.insert(k.to_string(), v.to_string());
        }
        BackupConfig::from_lookup(|n| env.get(n).cloned())
    }

    #[test]
    fn defaults() {
        let c = config(&[]).unwrap();
        assert_eq!(c.host, "db-0.db");
        assert_eq!(c.port, DEFAULT_PORT);
        assert_eq!(c.user, "streaming_replica");
        assert_eq!(c.password_file, Path::new("/s/password"));
        assert_eq!(c.wal_wait, DEFAULT_WAL_WAIT);
        assert_eq!(c.retention, Retention::default());
        assert!(c.pg_bin.ends_with("bin"), "{}", c.pg_bin.display());
    }

    #[test]
    fn explicit_values() {
        let c = config(&[
            (PORT, "6543"),
            (WAL_WAIT_SECONDS, "20"),
            (RETENTION_WINDOW, "7d"),
            (RETENTION_COUNT, "3"),
            (PG_BIN, "/opt/pg/bin"),
        ])
        .unwrap();
        assert_eq!(c.port, 6543);
        assert_eq!(c.wal_wait, Duration::from_secs(20));
        assert_eq!(c.retention.window, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(c.retention.count, Some(3));
        assert_eq!(c.pg_bin, Path::new("/opt/pg/bin"));
    }

    #[test]
    fn rejects_bad_values() {
        for (var, value) in [
            (PORT, "0"),
            (PORT, "70000"),
            (WAL_WAIT_SECONDS, "-1"),
            (RETENTION_WINDOW, "7"),
            (RETENTION_WINDOW, "1w"),
            (RETENTION_WINDOW, "0d"),
            (RETENTION_COUNT, "0"),
            (RETENTION_COUNT, "many"),
        ] {
            let err = config(&[(var, value)]).unwrap_err().to_string();
            assert!(err.starts_with(var), "{var}={value}: {err}");
        }
        let err = config(&[(HOST, " ")]).unwrap_err().to_string();
        assert_eq!(err, "GEODB_BACKUP_HOST is not set");
    }

    #[test]
    fn windows() {
        let secs = |t| parse_window(t).map(|d| d.as_secs());
        assert_eq!(secs("7d"), Some(604_800));
        assert_eq!(secs(" 12h "), Some(43_200));
        assert_eq!(secs("30m"), Some(1_800));
        assert_eq!(secs("90s"), Some(90));
        for bad in ["", "d", "+5m", "1.5h", "5 m", "5M", "99999999999999999999d"] {
            assert_eq!(parse_window(bad), None, "{bad}");
        }
    }

    #[test]
    fn passfile_is_private_escaped_and_removed() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("geodb-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("password");
        std::fs::write(&secret, "pa:ss\\word\n").unwrap();
        let passfile = Passfile::write(&secret).unwrap();
        let path = passfile.path().to_path_buf();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "*:*:*:*:pa\\:ss\\\\word\n"
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        drop(passfile);
        assert!(!path.parent().unwrap().exists());
        std::fs::write(&secret, "\n").unwrap();
        let err = Passfile::write(&secret).err().unwrap().to_string();
        assert!(
            err.starts_with(PASSWORD_FILE) && err.contains("empty"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
