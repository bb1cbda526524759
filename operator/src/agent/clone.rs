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
use crate::pod_contract::Credential;

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
                "passfile={} application_name={}",
                passfile.display(),
                settings.instance
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

/// Turn the data directory of a former primary into a replica of the current one:
/// pg_rewind from the primary, or a fresh clone when rewinding is impossible.
pub fn rejoin(settings: &Settings, bin: &Path) -> Result<()> {
    wait_for_primary(settings, bin, "rewinding")?;
    let passfile = std::env::temp_dir().join("geodb-superuser.pgpass");
    write_pgpass(
        &passfile,
        SUPERUSER,
        &settings.password(Credential::Superuser)?,
    )?;
    let source = format!(
        "host={} port={POSTGRES_PORT} user={SUPERUSER} dbname=postgres passfile={} connect_timeout=5",
        settings.rw_host,
        passfile.display()
    );
    let pgdata = settings.pgdata.display().to_string();
    let rewound = run(
        bin,
        "pg_rewind",
        &["--target-pgdata", &pgdata, "--source-server", &source],
        None,
    );
    let _ = std::fs::remove_file(&passfile);
    match rewound {
        Ok(()) => info!("pg_rewind done; starting as a replica"),
        Err(error) => {
            // The volume's WAL cannot be matched to the new primary's history; its data
            // is on the new primary already, so a fresh copy is taken.
            warn!(%error, "pg_rewind failed; cloning the primary afresh");
            std::fs::remove_dir_all(&settings.pgdata).map_err(AgentError::io(&settings.pgdata))?;
            return clone_primary(settings, bin);
        }
    }
    write_private(&settings.pgdata.join("standby.signal"), "")
}
