//! A replica's data: a base backup of the primary, and the way back for a former
//! primary (pg_rewind, or a fresh base backup when that fails).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::command::run;
use super::error::{AgentError, Result};
use super::files::{write_pgpass, write_private};
use super::settings::Settings;
use crate::names::{POSTGRES_PORT, REPLICATION_USER, SUPERUSER};
use crate::pod_contract::{libpq_tls, Credential, KEPT_DATA_PREFIX};

/// How long a clone or a rejoin waits for the primary before the agent gives up (and
/// the container restarts).
const PRIMARY_WAIT: Duration = Duration::from_secs(3600);

fn primary_reachable(bin: &Path, host: &str) -> bool {
    Command::new(bin.join("pg_isready"))
        .args([
            "-q",
            "-h",
            host,
            "-p",
            &POSTGRES_PORT.to_string(),
            "-t",
            "3",
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Block until the primary answers at the read-write Service.
fn wait_for_primary(settings: &Settings, bin: &Path, purpose: &str) -> Result<()> {
    let started = Instant::now();
    while !primary_reachable(bin, &settings.rw_host) {
        if started.elapsed() > PRIMARY_WAIT {
            return Err(AgentError::PrimaryUnreachable(
                PRIMARY_WAIT,
                settings.rw_host.clone(),
            ));
        }
        info!(host = %settings.rw_host, "waiting for the primary before {purpose}");
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(())
}

/// Copy the primary with pg_basebackup into the empty data directory.
pub fn clone_primary(settings: &Settings, bin: &Path) -> Result<()> {
    wait_for_primary(settings, bin, "cloning")?;
    let passfile = settings.replication_passfile();
    write_pgpass(
        &passfile,
        REPLICATION_USER,
        &settings.password(Credential::Replication)?,
    )?;
    let pgdata = settings.pgdata.display().to_string();
    let result = run(
        bin,
        "pg_basebackup",
        &[
            "-D",
            &pgdata,
            "-h",
            &settings.rw_host,
            "-p",
            &POSTGRES_PORT.to_string(),
            "-U",
            REPLICATION_USER,
            "-X",
            "stream",
            "-R",
            "-c",
            "fast",
            "-d",
            &format!(
                "passfile={} application_name={} {}",
                passfile.display(),
                settings.instance,
                libpq_tls()
            ),
        ],
        None,
    );
    if result.is_err() {
        // Leave no half-copied directory behind: the next start tries again from scratch.
        let _ = std::fs::remove_dir_all(&settings.pgdata);
    }
    result
}

/// Data directories set aside earlier on this volume.
pub fn kept_directories(settings: &Settings) -> Vec<String> {
    let Some(volume) = settings.pgdata.parent() else {
        return Vec::new();
    };
    let mut kept: Vec<String> = std::fs::read_dir(volume)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|name| name.starts_with(KEPT_DATA_PREFIX))
                .collect()
        })
        .unwrap_or_default();
    kept.sort();
    kept
}

/// Where a failed rejoin leaves the data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejoined {
    /// pg_rewind made it a replica of the primary.
    Rewound,
    /// pg_rewind failed; the old directory was moved to this name and a fresh copy taken.
    KeptAndCloned { kept: String, why: String },
}

/// What to do when pg_rewind failed against a primary that is reachable: set the data
/// aside, unless an earlier failure already did (then a human decides; the volume may
/// not hold a third copy).
pub fn after_failed_rewind(already_kept: &[String]) -> Result<(), String> {
    match already_kept {
        [] => Ok(()),
        kept => Err(format!(
            "pg_rewind failed and this volume already keeps {}; remove it (or them) when no longer needed, and the instance rejoins",
            kept.join(", ")
        )),
    }
}

/// The source of a rewind accepts a superuser login (a failure of pg_rewind that is
/// really a connection or login problem says nothing about this data directory).
fn source_usable(bin: &Path, source: &str) -> bool {
    run(
        bin,
        "psql",
        &["-X", "-q", "-d", source, "-c", "SELECT 1"],
        None,
    )
    .is_ok()
}

/// Turn the data directory of a former primary into a replica of the current one:
/// pg_rewind from the primary. When rewinding is impossible, the directory is never
/// removed: it is moved aside on the same volume and a fresh copy is taken; a second
/// failure parks the instance (`AgentError::Parked`) until a human clears the volume.
pub fn rejoin(settings: &Settings, bin: &Path) -> Result<Rejoined> {
    wait_for_primary(settings, bin, "rewinding")?;
    let passfile = std::env::temp_dir().join("geodb-superuser.pgpass");
    write_pgpass(
        &passfile,
        SUPERUSER,
        &settings.password(Credential::Superuser)?,
    )?;
    let source = format!(
        "host={} port={POSTGRES_PORT} user={SUPERUSER} dbname=postgres passfile={} connect_timeout=5 {}",
        settings.rw_host,
        passfile.display(),
        libpq_tls()
    );
    let pgdata = settings.pgdata.display().to_string();
    let rewound = if failpoint(settings, "rewind-fails") {
        Err(AgentError::command("pg_rewind", "failpoint rewind-fails"))
    } else {
        run(
            bin,
            "pg_rewind",
            &["--target-pgdata", &pgdata, "--source-server", &source],
            None,
        )
    };
    let usable = rewound.is_ok() || source_usable(bin, &source);
    let _ = std::fs::remove_file(&passfile);
    let error = match rewound {
        Ok(()) => {
            info!("pg_rewind done; starting as a replica");
            write_private(&settings.pgdata.join("standby.signal"), "")?;
            return Ok(Rejoined::Rewound);
        }
        // Nothing is decided about the data while the primary cannot be used: retried.
        Err(error) if !usable => return Err(error),
        Err(error) => error,
    };
    after_failed_rewind(&kept_directories(settings)).map_err(AgentError::Parked)?;
    let kept = set_aside(settings)?;
    warn!(%error, %kept, "pg_rewind failed: the data directory is kept aside, and a fresh copy of the primary taken");
    clone_primary(settings, bin)?;
    Ok(Rejoined::KeptAndCloned {
        kept,
        why: error.to_string(),
    })
}

/// A replica that fell behind past the primary's WAL retention: its data directory is
/// set aside (never removed) and a fresh copy of the primary taken; a volume that keeps one
/// already parks the instance instead.
pub fn reclone(settings: &Settings, bin: &Path, why: &str) -> Result<Rejoined> {
    after_failed_rewind(&kept_directories(settings)).map_err(AgentError::Parked)?;
    let kept = set_aside(settings)?;
    clone_primary(settings, bin)?;
    Ok(Rejoined::KeptAndCloned {
        kept,
        why: why.to_owned(),
    })
}

/// Rename the data directory to `pgdata.kept-<UTC time>` beside it; returns the name.
fn set_aside(settings: &Settings) -> Result<String> {
    let kept = format!(
        "{KEPT_DATA_PREFIX}{}",
        k8s_openapi::jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ")
    );
    let aside = settings.pgdata.with_file_name(&kept);
    std::fs::rename(&settings.pgdata, &aside).map_err(AgentError::io(&settings.pgdata))?;
    Ok(kept)
}

/// A fault injected by the e2e drills: a file `geodb-failpoints` on the data volume
/// (beside the data directory) that names it on a line of its own.
fn failpoint(settings: &Settings, name: &str) -> bool {
    settings
        .pgdata
        .parent()
        .and_then(|volume| std::fs::read_to_string(volume.join("geodb-failpoints")).ok())
        .is_some_and(|text| text.lines().any(|line| line.trim() == name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_failed_rewind_parks_instead_of_setting_more_aside() {
        assert!(after_failed_rewind(&[]).is_ok());
        let parked = after_failed_rewind(&["pgdata.kept-20261201T000000Z".into()]).unwrap_err();
        assert!(parked.contains("pgdata.kept-20261201T000000Z"), "{parked}");
    }
}
