//! `geodb instance`: the process that runs in every database pod. It prepares the data
//! directory (initdb on the bootstrap instance of a new cluster, a base backup from the
//! primary everywhere else), then runs PostgreSQL as its child and turns the kubelet's
//! SIGTERM into a fast shutdown.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::builders::config::{BOOTSTRAPPED_KEY, POSTGRESQL_CONF};
use crate::names::{POSTGRES_PORT, REPLICATION_USER, SUPERUSER};

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("environment variable {0} is not set")]
    MissingEnv(&'static str),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{command} failed: {detail}")]
    Command { command: String, detail: String },
    #[error("no PostgreSQL server binaries found (looked for pg_ctl on PATH and in /usr/lib/postgresql/*/bin)")]
    NoBinaries,
    #[error("timed out after {0:?} waiting for the primary at {1}")]
    PrimaryUnreachable(Duration, String),
}

type Result<T> = std::result::Result<T, InstanceError>;

/// Everything the pod's environment tells the instance.
#[derive(Clone, Debug)]
pub struct Settings {
    pub instance: String,
    pub bootstrap_instance: String,
    pub rw_host: String,
    pub database: String,
    pub owner: String,
    pub pgdata: PathBuf,
    pub config_dir: PathBuf,
    pub secrets_dir: PathBuf,
    pub socket_dir: PathBuf,
}

fn env(name: &'static str) -> Result<String> {
    std::env::var(name).map_err(|_| InstanceError::MissingEnv(name))
}

impl Settings {
    pub fn from_env() -> Result<Self> {
        Ok(Self {
            instance: env("GEODB_INSTANCE")?,
            bootstrap_instance: env("GEODB_BOOTSTRAP_INSTANCE")?,
            rw_host: env("GEODB_RW_HOST")?,
            database: env("GEODB_DATABASE")?,
            owner: env("GEODB_DATABASE_OWNER")?,
            pgdata: PathBuf::from(env("PGDATA")?),
            config_dir: PathBuf::from(env("GEODB_CONFIG_DIR")?),
            secrets_dir: PathBuf::from(env("GEODB_SECRETS_DIR")?),
            socket_dir: PathBuf::from(env("PGHOST")?),
        })
    }

    fn password(&self, role_dir: &str) -> Result<String> {
        let path = self.secrets_dir.join(role_dir).join("password");
        std::fs::read_to_string(&path)
            .map(|p| p.trim_end().to_owned())
            .map_err(|source| InstanceError::Read { path, source })
    }

    fn bootstrapped(&self) -> bool {
        std::fs::read_to_string(self.config_dir.join(BOOTSTRAPPED_KEY))
            .map(|v| v.trim() == "true")
            .unwrap_or(false)
    }
}

/// How an empty data directory gets its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// The data directory already holds a cluster.
    Existing,
    /// A brand-new cluster: this instance runs initdb.
    Initdb,
    /// Copy the primary with pg_basebackup and follow it.
    Clone,
}

/// Only the bootstrap instance of a cluster that never ran creates a new database; every
/// other empty instance clones the primary, so a lost volume never becomes a second,
/// empty primary.
pub fn bootstrap_mode(
    has_data: bool,
    is_bootstrap_instance: bool,
    bootstrapped: bool,
) -> Bootstrap {
    match (has_data, is_bootstrap_instance && !bootstrapped) {
        (true, _) => Bootstrap::Existing,
        (false, true) => Bootstrap::Initdb,
        (false, false) => Bootstrap::Clone,
    }
}

/// SQL string literal.
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// SQL identifier.
pub fn ident(value: &str) -> String {
    format!("\"{}\"", value.replace('"', "\"\""))
}

/// Statements run once on a new cluster. Statement logging is off in the session so the
/// passwords never reach the server log.
pub fn bootstrap_sql(
    owner: &str,
    database: &str,
    app_password: &str,
    replication_password: &str,
) -> String {
    format!(
        "SET log_statement = 'none';\n\
         SET log_min_duration_statement = -1;\n\
         SET password_encryption = 'scram-sha-256';\n\
         CREATE ROLE {repl} WITH REPLICATION LOGIN PASSWORD {repl_pw};\n\
         CREATE ROLE {owner_id} WITH LOGIN PASSWORD {app_pw};\n\
         CREATE DATABASE {db} OWNER {owner_id};\n",
        repl = ident(REPLICATION_USER),
        repl_pw = literal(replication_password),
        owner_id = ident(owner),
        app_pw = literal(app_password),
        db = ident(database),
    )
}

/// Extensions every application database gets.
pub const EXTENSIONS_SQL: &str = "CREATE EXTENSION IF NOT EXISTS postgis;\n\
     CREATE EXTENSION IF NOT EXISTS pg_stat_statements;\n";

fn bin_dir() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("pg_ctl").exists() {
                return Ok(dir);
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| InstanceError::NoBinaries)?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions.pop().ok_or(InstanceError::NoBinaries)
}

fn run(
    bin: &Path,
    program: &str,
    args: &[&str],
    envs: &[(&str, &str)],
    stdin: Option<&str>,
) -> Result<()> {
    let command = format!("{program} {}", args.first().copied().unwrap_or_default());
    let mut cmd = Command::new(bin.join(program));
    cmd.args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd.spawn().map_err(|e| InstanceError::Command {
        command: command.clone(),
        detail: e.to_string(),
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(input.as_bytes())
            .map_err(|e| InstanceError::Command {
                command: command.clone(),
                detail: e.to_string(),
            })?;
    }
    let status = child.wait().map_err(|e| InstanceError::Command {
        command: command.clone(),
        detail: e.to_string(),
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(InstanceError::Command {
            command,
            detail: status.to_string(),
        })
    }
}

fn conf_arg(settings: &Settings) -> String {
    format!(
        "config_file={}",
        settings.config_dir.join(POSTGRESQL_CONF).display()
    )
}

fn initdb(settings: &Settings, bin: &Path) -> Result<()> {
    let pwfile = std::env::temp_dir().join("geodb-superuser-password");
    std::fs::write(&pwfile, settings.password("superuser")?).map_err(|source| {
        InstanceError::Read {
            path: pwfile.clone(),
            source,
        }
    })?;
    let pgdata = settings.pgdata.display().to_string();
    let result = run(
        bin,
        "initdb",
        &[
            "-D",
            &pgdata,
            "--username",
            SUPERUSER,
            "--pwfile",
            &pwfile.display().to_string(),
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--data-checksums",
        ],
        &[],
        None,
    );
    let _ = std::fs::remove_file(&pwfile);
    result?;

    // Roles, database and extensions, on a server that listens on the socket only.
    let socket = settings.socket_dir.display().to_string();
    let options = format!(
        "-c {} -c listen_addresses='' -c unix_socket_directories={socket}",
        conf_arg(settings)
    );
    run(
        bin,
        "pg_ctl",
        &["-D", &pgdata, "-o", &options, "-w", "-t", "300", "start"],
        &[],
        None,
    )?;
    let sql = bootstrap_sql(
        &settings.owner,
        &settings.database,
        &settings.password("app")?,
        &settings.password("replication")?,
    );
    let psql = |db: &str, input: &str| {
        run(
            bin,
            "psql",
            &[
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-h",
                &socket,
                "-U",
                SUPERUSER,
                "-d",
                db,
            ],
            &[],
            Some(input),
        )
    };
    let outcome = psql("postgres", &sql).and_then(|()| psql(&settings.database, EXTENSIONS_SQL));
    run(
        bin,
        "pg_ctl",
        &["-D", &pgdata, "-m", "fast", "-w", "stop"],
        &[],
        None,
    )?;
    outcome
}

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

fn clone_primary(settings: &Settings, bin: &Path) -> Result<()> {
    let deadline = Duration::from_secs(3600);
    let started = Instant::now();
    while !primary_reachable(bin, &settings.rw_host) {
        if started.elapsed() > deadline {
            return Err(InstanceError::PrimaryUnreachable(
                deadline,
                settings.rw_host.clone(),
            ));
        }
        info!(host = %settings.rw_host, "waiting for the primary");
        std::thread::sleep(Duration::from_secs(2));
    }
    // A passfile keeps the password out of the process list and of primary_conninfo.
    let passfile = settings.pgdata.with_extension("pgpass");
    let line = format!(
        "*:{POSTGRES_PORT}:*:{REPLICATION_USER}:{}\n",
        settings
            .password("replication")?
            .replace('\\', "\\\\")
            .replace(':', "\\:")
    );
    write_private(&passfile, &line)?;
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
        &[],
        None,
    );
    if result.is_err() {
        // Leave no half-copied directory behind: the next start tries again from scratch.
        let _ = std::fs::remove_dir_all(&settings.pgdata);
    }
    result
}

fn write_private(path: &Path, content: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| InstanceError::Read {
            path: path.to_owned(),
            source,
        })?;
    file.write_all(content.as_bytes())
        .map_err(|source| InstanceError::Read {
            path: path.to_owned(),
            source,
        })
}

/// Prepare the data directory, then run PostgreSQL until it exits.
pub async fn run_instance(settings: Settings) -> Result<ExitStatus> {
    let bin = bin_dir()?;
    let has_data = settings.pgdata.join("PG_VERSION").exists();
    let mode = bootstrap_mode(
        has_data,
        settings.instance == settings.bootstrap_instance,
        settings.bootstrapped(),
    );
    info!(instance = %settings.instance, ?mode, bin = %bin.display(), "preparing data directory");
    let prepare = settings.clone();
    let prepare_bin = bin.clone();
    tokio::task::spawn_blocking(move || match mode {
        Bootstrap::Existing => Ok(()),
        Bootstrap::Initdb => initdb(&prepare, &prepare_bin),
        Bootstrap::Clone => clone_primary(&prepare, &prepare_bin),
    })
    .await
    .map_err(|e| InstanceError::Command {
        command: "prepare".into(),
        detail: e.to_string(),
    })??;

    let mut child = tokio::process::Command::new(bin.join("postgres"))
        .arg("-D")
        .arg(&settings.pgdata)
        .arg("-c")
        .arg(conf_arg(&settings))
        .spawn()
        .map_err(|e| InstanceError::Command {
            command: "postgres".into(),
            detail: e.to_string(),
        })?;
    let pid = child.id();
    let mut term = signal(SignalKind::terminate()).map_err(|e| InstanceError::Command {
        command: "signal".into(),
        detail: e.to_string(),
    })?;
    tokio::select! {
        status = child.wait() => status.map_err(|e| InstanceError::Command { command: "postgres".into(), detail: e.to_string() }),
        _ = term.recv() => {
            // Smart shutdown would wait for every client; the pod is going away.
            if let Some(pid) = pid {
                info!("SIGTERM: fast shutdown of PostgreSQL");
                // SAFETY: kill(2) with a pid we spawned and a valid signal number.
                unsafe { libc::kill(pid as i32, libc::SIGINT) };
            }
            child.wait().await.map_err(|e| InstanceError::Command { command: "postgres".into(), detail: e.to_string() })
        }
    }
    .inspect(|status| {
        if !status.success() {
            warn!(%status, "PostgreSQL exited");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_new_bootstrap_instance_runs_initdb() {
        assert_eq!(bootstrap_mode(false, true, false), Bootstrap::Initdb);
        assert_eq!(bootstrap_mode(false, true, true), Bootstrap::Clone);
        assert_eq!(bootstrap_mode(false, false, false), Bootstrap::Clone);
        assert_eq!(bootstrap_mode(true, true, false), Bootstrap::Existing);
    }

    #[test]
    fn quoting() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn bootstrap_sql_creates_roles_and_database() {
        let sql = bootstrap_sql("app", "maps", "pw1", "pw2");
        assert!(sql.starts_with("SET log_statement = 'none';"));
        assert!(sql
            .contains("CREATE ROLE \"streaming_replica\" WITH REPLICATION LOGIN PASSWORD 'pw2';"));
        assert!(sql.contains("CREATE DATABASE \"maps\" OWNER \"app\";"));
    }
}
