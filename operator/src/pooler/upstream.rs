//! The configuration PgBouncer reads: the mounted one, less the settings the image's
//! PgBouncer is too old for (it refuses to start on an unknown setting), with the host
//! the operator pinned (the primary's own Service, see `primary`) in place of the `-rw`
//! Service, written to a writable copy (the mounted files are read-only).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Settings the operator writes that older PgBouncers refuse to start with, and the
/// version that brought each.
const NEWER_SETTINGS: [(&str, (u32, u32)); 1] = [("max_prepared_statements", (1, 21))];

/// The `host=` of the `* =` line in `[databases]`, if any (pure).
pub fn fallback_host(ini: &str) -> Option<&str> {
    let mut in_databases = false;
    for line in ini.lines().map(str::trim) {
        if line.starts_with('[') {
            in_databases = line == "[databases]";
        } else if in_databases && line.starts_with('*') {
            return line
                .split_whitespace()
                .find_map(|word| word.strip_prefix("host="));
        }
    }
    None
}

/// PgBouncer's `major.minor` from `pgbouncer --version` ("PgBouncer 1.24.1 ...").
pub fn parse_version(text: &str) -> Option<(u32, u32)> {
    let word = text.split_whitespace().nth(1)?;
    let mut parts = word.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

/// The settings of `ini` that PgBouncer `version` does not know (pure).
pub fn unknown_to(ini: &str, version: (u32, u32)) -> Vec<&'static str> {
    NEWER_SETTINGS
        .iter()
        .filter(|(_, since)| version < *since)
        .map(|(key, _)| *key)
        .filter(|key| ini.lines().any(|l| setting_of(l) == Some(key)))
        .collect()
}

fn setting_of(line: &str) -> Option<&str> {
    line.split_once('=').map(|(key, _)| key.trim())
}

/// The `* =` line of `[databases]` with its `host=` set to `host` (pure).
fn with_host(line: &str, host: &str) -> String {
    line.split(' ')
        .map(|word| match word.strip_prefix("host=") {
            Some(_) => format!("host={host}"),
            None => word.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The mounted configuration without the settings in `drop`, and with the `* =`
/// database's host replaced by `pin` when one is given (pure).
pub fn render(ini: &str, drop: &[&str], pin: Option<&str>) -> String {
    let mut in_databases = false;
    let mut out = String::with_capacity(ini.len());
    for line in ini.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_databases = trimmed == "[databases]";
        }
        if !in_databases && setting_of(trimmed).is_some_and(|key| drop.contains(&key)) {
            continue;
        }
        match pin {
            Some(host) if in_databases && trimmed.starts_with('*') => {
                out.push_str(&with_host(line, host))
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The mounted file, the effective copy PgBouncer reads, the version of the PgBouncer
/// that reads it, and the host pinned in place of the mounted one.
pub struct Upstream {
    mounted: PathBuf,
    effective: PathBuf,
    version: Option<(u32, u32)>,
    pin: Mutex<Option<String>>,
}

impl Upstream {
    pub fn new(mounted: &Path, effective: &Path, version: Option<(u32, u32)>) -> Self {
        Self {
            mounted: mounted.to_owned(),
            effective: effective.to_owned(),
            version,
            pin: Mutex::new(None),
        }
    }

    /// The host PgBouncer is pinned to, if any.
    pub fn pinned(&self) -> Option<String> {
        self.pin.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Pin PgBouncer to `host` (`None`: back to the mounted host) and write the effective
    /// file; whether it changed.
    pub fn pin(&self, host: Option<String>) -> std::io::Result<bool> {
        if let Ok(mut pin) = self.pin.lock() {
            *pin = host;
        }
        self.write()
    }

    pub fn effective(&self) -> &Path {
        &self.effective
    }

    /// The `-rw` (or `-ro`) Service PgBouncer connects to, from the mounted file.
    pub fn fallback(&self) -> Option<String> {
        let mounted = std::fs::read_to_string(&self.mounted).ok()?;
        fallback_host(&mounted).map(str::to_owned)
    }

    /// Write the effective file when it should differ from what it holds; whether it
    /// changed.
    pub fn write(&self) -> std::io::Result<bool> {
        let mounted = std::fs::read_to_string(&self.mounted)?;
        let drop = self
            .version
            .map(|v| unknown_to(&mounted, v))
            .unwrap_or_default();
        let wanted = render(&mounted, &drop, self.pinned().as_deref());
        if std::fs::read_to_string(&self.effective).ok().as_deref() == Some(wanted.as_str()) {
            return Ok(false);
        }
        if !drop.is_empty() {
            tracing::warn!(
                settings = ?drop,
                version = ?self.version,
                "this PgBouncer is too old for these settings: running without them"
            );
        }
        // Whole or not at all: PgBouncer may read it at any moment.
        let partial = self.effective.with_extension("partial");
        std::fs::write(&partial, wanted)?;
        std::fs::rename(&partial, &self.effective)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INI: &str =
        "[databases]\n* = host=geo-rw.prod.svc port=5432\n\n[pgbouncer]\nlisten_port = 6432\n";

    #[test]
    fn settings_an_old_pgbouncer_lacks_are_left_out() {
        assert_eq!(
            parse_version("PgBouncer 1.24.1\nlibevent 2.1"),
            Some((1, 24))
        );
        assert_eq!(parse_version("PgBouncer 1.18.0"), Some((1, 18)));
        assert_eq!(parse_version("nonsense"), None);
        let ini = format!("{INI}max_prepared_statements = 200\n");
        assert_eq!(unknown_to(&ini, (1, 18)), ["max_prepared_statements"]);
        assert!(unknown_to(&ini, (1, 21)).is_empty());
        assert!(unknown_to(INI, (1, 18)).is_empty());
        assert_eq!(render(&ini, &unknown_to(&ini, (1, 18)), None), INI);
        assert_eq!(render(&ini, &[], None), ini);
        assert_eq!(fallback_host(INI), Some("geo-rw.prod.svc"));
    }

    #[test]
    fn the_effective_file_is_written_once() {
        let dir = std::env::temp_dir().join(format!("geodb-upstream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("mounted.ini"), INI).unwrap();
        let up = Upstream::new(&dir.join("mounted.ini"), &dir.join("effective.ini"), None);
        assert!(up.write().unwrap());
        assert!(!up.write().unwrap());
        assert_eq!(up.fallback().as_deref(), Some("geo-rw.prod.svc"));
        // A pin changes the host PgBouncer reads, not the mounted one; unpinning restores it.
        assert!(up.pin(Some("geo-2.prod.svc".into())).unwrap());
        let effective = std::fs::read_to_string(dir.join("effective.ini")).unwrap();
        assert!(effective.contains("* = host=geo-2.prod.svc port=5432\n"));
        assert_eq!(up.fallback().as_deref(), Some("geo-rw.prod.svc"));
        assert!(!up.pin(Some("geo-2.prod.svc".into())).unwrap());
        assert!(up.pin(None).unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.join("effective.ini")).unwrap(),
            INI
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
