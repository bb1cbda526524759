//! A new cluster from another's backups (`spec.bootstrap.recovery`): the newest base
//! backup before the target is restored from the source archive, PostgreSQL replays the
//! source's archived WAL up to the target and promotes, then the roles get this
//! cluster's passwords. Only the bootstrap instance of a cluster that never ran does
//! this; every other instance then clones it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tracing::info;

use super::bootstrap::{psql_socket, socket_only_options, EXTENSIONS_SQL};
use super::command::run;
use super::error::{AgentError, Result};
use super::files::write_private;
use super::settings::Settings;
use crate::api::RecoveryTarget;
use crate::archive::Source;
use crate::names::{REPLICATION_USER, SUPERUSER};
use crate::pod_contract::Credential;
use crate::postgres::sql::{ident, literal};

/// PostgreSQL's `restore_command` during the recovery: the source's archive.
pub const RESTORE_COMMAND: &str = "geodb wal-fetch --source recovery %f %p";

/// How long the replay may take before the agent gives up (and the container restarts
/// the whole recovery).
const REPLAY_DEADLINE: Duration = Duration::from_secs(6 * 3600);
/// How long the postmaster may take to appear after `pg_ctl start -W`.
const START_GRACE: Duration = Duration::from_secs(60);

/// The server options of the replay: socket only, the source's archive, the target,
/// promotion at the target.
pub fn replay_options(settings: &Settings, target: &RecoveryTarget) -> String {
    let mut options = vec![
        socket_only_options(settings),
        format!("-c restore_command='{RESTORE_COMMAND}'"),
        "-c recovery_target_action=promote".to_owned(),
        "-c recovery_target_timeline=latest".to_owned(),
    ];
    for (name, value) in target.postgres_settings() {
        // pg_ctl hands the options to a shell: single quotes keep the value one word.
        options.push(format!("-c {name}='{}'", value.replace('\'', "")));
    }
    options.join(" ")
}

/// A restored directory is the source's: not a standby of anyone here, and its
/// `postgresql.auto.conf` may point at the source's primary.
fn forget_the_source(pgdata: &Path) -> Result<()> {
    for signal in ["standby.signal", "recovery.signal"] {
        let path = pgdata.join(signal);
        if path.exists() {
            std::fs::remove_file(&path).map_err(AgentError::io(&path))?;
        }
    }
    let auto = pgdata.join("postgresql.auto.conf");
    if let Ok(content) = std::fs::read_to_string(&auto) {
        let kept: String = content
            .lines()
            .filter(|line| {
                let key = line.trim_start();
                !(key.starts_with("primary_conninfo") || key.starts_with("primary_slot_name"))
            })
            .map(|line| format!("{line}\n"))
            .collect();
        write_private(&auto, &kept)?;
    }
    write_private(&pgdata.join("recovery.signal"), "")
}

/// The restored roles carry the source's passwords: this cluster's Secrets decide. The
/// replication role and the application database are made when the source lacks them.
pub fn adopt_sql(
    owner: &str,
    app_password: &str,
    replication_password: &str,
    superuser_password: &str,
) -> String {
    format!(
        "SET log_statement = 'none';\n\
         SET log_min_duration_statement = -1;\n\
         SET password_encryption = 'scram-sha-256';\n\
         ALTER ROLE {su} WITH PASSWORD {su_pw};\n\
         SELECT format('CREATE ROLE %I WITH REPLICATION LOGIN', {repl_lit}) WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {repl_lit}) \\gexec\n\
         ALTER ROLE {repl} WITH REPLICATION LOGIN PASSWORD {repl_pw};\n\
         SELECT format('CREATE ROLE %I WITH LOGIN', {owner_lit}) WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {owner_lit}) \\gexec\n\
         ALTER ROLE {owner_id} WITH LOGIN PASSWORD {app_pw};\n",
        su = ident(SUPERUSER),
        su_pw = literal(superuser_password),
        repl = ident(REPLICATION_USER),
        repl_lit = literal(REPLICATION_USER),
        repl_pw = literal(replication_password),
        owner_id = ident(owner),
        owner_lit = literal(owner),
        app_pw = literal(app_password),
    )
}

fn database_sql(database: &str, owner: &str) -> String {
    format!(
        "SELECT format('CREATE DATABASE %I OWNER %I', {db}, {owner}) WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = {db}) \\gexec\n",
        db = literal(database),
        owner = literal(owner),
    )
}

fn psql(settings: &Settings, bin: &Path, db: &str, input: &str) -> Result<()> {
    psql_socket(bin, &settings.socket_dir.display().to_string(), db, input)
}

/// Where the replaying server is.
#[derive(Debug, PartialEq, Eq)]
enum Replay {
    /// No postmaster (yet, or any more).
    NotRunning,
    Replaying,
    Promoted,
}

fn replay_state(settings: &Settings, bin: &Path) -> Result<Replay> {
    let pgdata = settings.pgdata.display().to_string();
    let running = Command::new(bin.join("pg_ctl"))
        .args(["-D", &pgdata, "status"])
        .output()
        .map_err(|e| AgentError::command("pg_ctl status", e))?;
    if !running.status.success() {
        return Ok(Replay::NotRunning);
    }
    let socket = settings.socket_dir.display().to_string();
    let out = Command::new(bin.join("psql"))
        .args(["-XAtq", "-h", &socket, "-U", SUPERUSER, "-d", "postgres"])
        .args(["-c", "SELECT pg_is_in_recovery()"])
        .output()
        .map_err(|e| AgentError::command("psql", e))?;
    let promoted = out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "f";
    Ok(if promoted {
        Replay::Promoted
    } else {
        Replay::Replaying
    })
}

/// Poll until the server promoted. `pg_ctl start -W` returns before the postmaster
/// writes its pid file: "not running" means stopped only once it was seen running, or
/// when it never appears.
fn wait_promoted(settings: &Settings, bin: &Path) -> Result<()> {
    let started = Instant::now();
    let mut said = Instant::now();
    let mut seen = false;
    loop {
        match replay_state(settings, bin)? {
            Replay::Promoted => return Ok(()),
            Replay::Replaying => seen = true,
            Replay::NotRunning if seen || started.elapsed() > START_GRACE => {
                return Err(AgentError::command(
                    "recovery",
                    "PostgreSQL stopped before it reached the recovery target (its log above says why)",
                ))
            }
            Replay::NotRunning => {}
        }
        if started.elapsed() > REPLAY_DEADLINE {
            return Err(AgentError::command(
                "recovery",
                format!("not promoted after {REPLAY_DEADLINE:?}"),
            ));
        }
        if said.elapsed() > Duration::from_secs(30) {
            info!(
                elapsed_s = started.elapsed().as_secs(),
                "replaying the source's WAL"
            );
            said = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn replay(settings: &Settings, bin: &Path, target: &RecoveryTarget) -> Result<()> {
    let pgdata = settings.pgdata.display().to_string();
    let options = replay_options(settings, target);
    // No wait in pg_ctl: replay may take longer than any start timeout; promotion is
    // what counts, and it is polled below.
    run(
        bin,
        "pg_ctl",
        &["-D", &pgdata, "-o", &options, "-W", "start"],
        None,
    )?;
    let started = Instant::now();
    if let Err(e) = wait_promoted(settings, bin) {
        let _ = run(
            bin,
            "pg_ctl",
            &["-D", &pgdata, "-m", "fast", "-w", "stop"],
            None,
        );
        return Err(e);
    }
    info!(
        elapsed_s = started.elapsed().as_secs(),
        "recovery reached its target and promoted"
    );
    let adopted = psql(
        settings,
        bin,
        "postgres",
        &adopt_sql(
            &settings.owner,
            &settings.password(Credential::App)?,
            &settings.password(Credential::Replication)?,
            &settings.password(Credential::Superuser)?,
        ),
    )
    .and_then(|()| {
        psql(
            settings,
            bin,
            "postgres",
            &database_sql(&settings.database, &settings.owner),
        )
    })
    .and_then(|()| psql(settings, bin, &settings.database, EXTENSIONS_SQL));
    let stopped = run(
        bin,
        "pg_ctl",
        &["-D", &pgdata, "-m", "fast", "-w", "stop"],
        None,
    );
    adopted.and(stopped)
}

/// Restore, replay, promote, adopt. On failure the partial copy is removed, so the next
/// start begins again from the backup (it holds nothing the archive does not).
pub fn recover(settings: &Settings, bin: &Path, target: &str) -> Result<()> {
    let target = RecoveryTarget::decode(target).ok_or_else(|| {
        AgentError::command("recovery", format!("unknown recovery target {target:?}"))
    })?;
    let outcome = restore_and_replay(settings, bin, &target);
    if outcome.is_err() {
        let _ = std::fs::remove_dir_all(&settings.pgdata);
    }
    outcome
}

fn restore_and_replay(settings: &Settings, bin: &Path, target: &RecoveryTarget) -> Result<()> {
    let config = Source::Recovery
        .config()
        .map_err(|e| AgentError::command("recovery", e))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AgentError::command("recovery", e))?;
    let manifest = runtime
        .block_on(crate::backup::restore_for(
            &config,
            &target.catalog_target(),
            &settings.pgdata,
        ))
        .map_err(|e| AgentError::command("restoring the base backup", e))?;
    info!(backup = %manifest.id, stop_lsn = %manifest.stop_lsn, "base backup restored");
    forget_the_source(&settings.pgdata)?;
    replay(settings, bin, target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_reads_the_source_and_stops_at_the_target() {
        let settings = crate::agent::settings::fixture();
        let target = RecoveryTarget::decode("time:2026-12-01T10:00:00Z").unwrap();
        let options = replay_options(&settings, &target);
        assert!(
            options.contains("-c restore_command='geodb wal-fetch --source recovery %f %p'"),
            "{options}"
        );
        assert!(
            options.contains("-c recovery_target_time='2026-12-01 10:00:00+00:00'"),
            "{options}"
        );
        assert!(
            options.contains("-c recovery_target_action=promote"),
            "{options}"
        );
        assert!(options.contains("listen_addresses=''"), "{options}");
        let latest = replay_options(&settings, &RecoveryTarget::decode("latest").unwrap());
        assert!(!latest.contains("recovery_target_time="), "{latest}");
    }

    #[test]
    fn the_roles_take_this_clusters_passwords() {
        let sql = adopt_sql("mapper", "app'pw", "repl-pw", "su-pw");
        assert!(sql.starts_with("SET log_statement = 'none';"));
        assert!(sql.contains("ALTER ROLE \"postgres\" WITH PASSWORD 'su-pw';"));
        assert!(sql.contains("ALTER ROLE \"mapper\" WITH LOGIN PASSWORD 'app''pw';"));
        assert!(sql.contains(
            "WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'streaming_replica') \\gexec"
        ));
    }

    #[test]
    fn a_restored_directory_forgets_its_source() {
        let dir = std::env::temp_dir().join(format!("geodb-recover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("standby.signal"), "").unwrap();
        std::fs::write(
            dir.join("postgresql.auto.conf"),
            "work_mem = '8MB'\nprimary_conninfo = 'host=old'\n",
        )
        .unwrap();
        forget_the_source(&dir).unwrap();
        assert!(!dir.join("standby.signal").exists());
        assert!(dir.join("recovery.signal").exists());
        assert_eq!(
            std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap(),
            "work_mem = '8MB'\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
