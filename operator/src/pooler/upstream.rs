//! Where the read-write pooler opens server connections. The mounted configuration names
//! the `-rw` Service. Right after a primary change the operator names the new primary's
//! own headless Service instead: its DNS answer is the pod itself, where the `-rw`
//! Service routes through kube-proxy, which follows the new labels a moment later (a
//! connection opened in between reaches the demoted instance and fails writes). The pin
//! holds for [`HOLD`], long enough for the Service to follow; then the mounted
//! configuration rules again, so a lost operator cannot leave the pooler pinned.
//! PgBouncer runs on the effective copy written here (the mounted files are read-only).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a pin outlives the role change that set it.
pub const HOLD: Duration = Duration::from_secs(60);

/// The `host=` of the `* =` line in `[databases]`, if any.
fn fallback_host(ini: &str) -> Option<&str> {
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

/// Whether `host` may be pinned: one of this cluster's instances (`<cluster>-<n>`), in the
/// namespace of the mounted `<cluster>-rw.<namespace>.svc` (pure).
pub fn allowed(ini: &str, host: &str) -> bool {
    let Some((service, domain)) = fallback_host(ini).and_then(|h| h.split_once('.')) else {
        return false;
    };
    let Some(cluster) = service.strip_suffix("-rw") else {
        return false;
    };
    host.strip_suffix(domain)
        .and_then(|h| h.strip_suffix('.'))
        .and_then(|h| h.strip_prefix(cluster))
        .and_then(|h| h.strip_prefix('-'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Settings the operator writes that older PgBouncers refuse to start with, and the
/// version that brought each.
const NEWER_SETTINGS: [(&str, (u32, u32)); 1] = [("max_prepared_statements", (1, 21))];

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

/// The mounted configuration with the `* =` line's host replaced by `host` and the
/// settings in `drop` left out (pure).
pub fn render(ini: &str, host: Option<&str>, drop: &[&str]) -> String {
    let mut in_databases = false;
    let mut out = String::with_capacity(ini.len() + 64);
    for line in ini.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_databases = trimmed == "[databases]";
        }
        if !in_databases && setting_of(trimmed).is_some_and(|key| drop.contains(&key)) {
            continue;
        }
        let host = host.filter(|_| in_databases && trimmed.starts_with('*'));
        if let Some(host) = host {
            let words: Vec<String> = trimmed
                .split_whitespace()
                .map(|w| match w.strip_prefix("host=") {
                    Some(_) => format!("host={host}"),
                    None => w.to_owned(),
                })
                .collect();
            out.push_str(&words.join(" "));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// The mounted file, the effective copy PgBouncer reads, the pin, and the version of the
/// PgBouncer that reads it.
pub struct Upstream {
    mounted: PathBuf,
    effective: PathBuf,
    pin: Mutex<Option<(String, Instant)>>,
    version: Option<(u32, u32)>,
}

impl Upstream {
    pub fn new(mounted: &Path, effective: &Path, version: Option<(u32, u32)>) -> Self {
        Self {
            mounted: mounted.to_owned(),
            effective: effective.to_owned(),
            pin: Mutex::new(None),
            version,
        }
    }

    pub fn effective(&self) -> &Path {
        &self.effective
    }

    /// Pin `host` for [`HOLD`] when it is one of the cluster's instances; whether it was.
    pub fn pin(&self, host: &str) -> bool {
        let mounted = std::fs::read_to_string(&self.mounted).unwrap_or_default();
        if !allowed(&mounted, host) {
            return false;
        }
        if let Ok(mut pin) = self.pin.lock() {
            *pin = Some((host.to_owned(), Instant::now() + HOLD));
        }
        true
    }

    /// Write the effective file when it should differ from what it holds (a changed
    /// mounted file, a new or expired pin); whether it changed.
    pub fn write(&self) -> std::io::Result<bool> {
        let mounted = std::fs::read_to_string(&self.mounted)?;
        let host = match self.pin.lock() {
            Ok(mut pin) => {
                if pin
                    .as_ref()
                    .is_some_and(|(_, until)| *until <= Instant::now())
                {
                    *pin = None;
                }
                pin.as_ref().map(|(host, _)| host.clone())
            }
            Err(_) => None,
        };
        let drop = self
            .version
            .map(|v| unknown_to(&mounted, v))
            .unwrap_or_default();
        let wanted = render(&mounted, host.as_deref(), &drop);
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
    fn only_an_instance_of_this_cluster_is_pinned() {
        assert!(allowed(INI, "geo-2.prod.svc"));
        assert!(allowed(INI, "geo-10.prod.svc"));
        assert!(!allowed(INI, "geo-rw.prod.svc"));
        assert!(!allowed(INI, "geo-2.other.svc"));
        assert!(!allowed(INI, "geo-.prod.svc"));
        assert!(!allowed(INI, "geox-2.prod.svc"));
        assert!(!allowed(INI, "evil.example.com"));
        assert!(!allowed(INI, "geo-2.prod.svc port=1"));
        assert!(!allowed("[pgbouncer]\n", "geo-2.prod.svc"));
    }

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
        let old = render(&ini, None, &unknown_to(&ini, (1, 18)));
        assert_eq!(old, INI);
        assert_eq!(render(&ini, None, &[]), ini);
    }

    #[test]
    fn render_swaps_only_the_fallback_host() {
        assert_eq!(render(INI, None, &[]), INI);
        let pinned = render(INI, Some("geo-2.prod.svc"), &[]);
        assert!(
            pinned.contains("* = host=geo-2.prod.svc port=5432\n"),
            "{pinned}"
        );
        assert!(pinned.contains("listen_port = 6432"));
        assert_eq!(fallback_host(&pinned), Some("geo-2.prod.svc"));
    }

    #[test]
    fn a_pin_writes_the_effective_file_once() {
        let dir = std::env::temp_dir().join(format!("geodb-upstream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("mounted.ini"), INI).unwrap();
        let up = Upstream::new(&dir.join("mounted.ini"), &dir.join("effective.ini"), None);
        assert!(up.write().unwrap());
        assert!(!up.write().unwrap());
        assert!(!up.pin("elsewhere.prod.svc"));
        assert!(up.pin("geo-1.prod.svc"));
        assert!(up.write().unwrap());
        let written = std::fs::read_to_string(dir.join("effective.ini")).unwrap();
        assert!(written.contains("host=geo-1.prod.svc"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
