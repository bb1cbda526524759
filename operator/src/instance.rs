//! `geodb instance`: the process that runs in every database pod. It prepares the data
//! directory (initdb on the bootstrap instance of a new cluster, a base backup from the
//! primary everywhere else), then runs PostgreSQL as its child and turns the kubelet's
//! SIGTERM into a fast shutdown.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use kube::Api;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::api::GeoDatabase;

use crate::builders::config::{BOOTSTRAPPED_KEY, POSTGRESQL_CONF};
use crate::leftover_processes;
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
    pub cluster: String,
    pub namespace: String,
    pub slot: String,
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
            cluster: env("GEODB_CLUSTER")?,
            namespace: env("POD_NAMESPACE")?,
            slot: env("GEODB_SLOT")?,
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

    /// Passfile of the replication role, outside the data directory.
    fn replication_passfile(&self) -> PathBuf {
        self.pgdata.with_extension("pgpass")
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
    // No replica exists yet: commits must not wait for one (synchronous mode).
    let options = format!(
        "-c {} -c listen_addresses='' -c unix_socket_directories={socket} -c synchronous_standby_names=''",
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
    let passfile = settings.replication_passfile();
    let line = format!(
        "*:{POSTGRES_PORT}:*:{REPLICATION_USER}:{}\n",
        pgpass_escape(&settings.password("replication")?)
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
        })?;
    // The mode above applies to new files only; the kubelet's fsGroup handling may have
    // widened an existing one.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        InstanceError::Read {
            path: path.to_owned(),
            source,
        }
    })
}

/// The PostgreSQL child and how it was started.
struct Postgres {
    child: tokio::process::Child,
}

impl Postgres {
    fn start(settings: &Settings, bin: &Path) -> Result<Self> {
        let conninfo = format!(
            "primary_conninfo=host={} port={POSTGRES_PORT} user={REPLICATION_USER} passfile={} application_name={} connect_timeout=5",
            settings.rw_host,
            settings.replication_passfile().display(),
            settings.instance
        );
        let child = tokio::process::Command::new(bin.join("postgres"))
            .arg("-D")
            .arg(&settings.pgdata)
            .arg("-c")
            .arg(conf_arg(settings))
            // Replicas stream through the -rw Service, so they follow every promotion.
            .arg("-c")
            .arg(conninfo)
            .arg("-c")
            .arg(format!("primary_slot_name={}", settings.slot))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| InstanceError::Command {
                command: "postgres".into(),
                detail: e.to_string(),
            })?;
        Ok(Self { child })
    }

    fn signal(&self, signal: i32) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) with a pid we spawned and a valid signal number.
            unsafe { libc::kill(pid as i32, signal) };
        }
    }

    /// Fast shutdown (SIGINT): clients are disconnected, and replicas receive all WAL
    /// up to the shutdown checkpoint before the server exits.
    async fn stop_fast(mut self) -> Result<ExitStatus> {
        self.signal(libc::SIGINT);
        self.child.wait().await.map_err(|e| InstanceError::Command {
            command: "postgres".into(),
            detail: e.to_string(),
        })
    }

    /// Immediate shutdown (SIGQUIT): used to fence, when waiting is not safe.
    async fn stop_immediate(mut self) -> Result<ExitStatus> {
        self.signal(libc::SIGQUIT);
        self.child.wait().await.map_err(|e| InstanceError::Command {
            command: "postgres".into(),
            detail: e.to_string(),
        })
    }
}

/// What the GeoDatabase says, as read by the instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// The instance that must be the primary (`status.targetPrimary`, else
    /// `status.currentPrimary`, else the bootstrap instance).
    pub primary: String,
    pub instances: i32,
    pub failover_delay: Duration,
}

impl Desired {
    pub fn of(db: &GeoDatabase, bootstrap_instance: &str) -> Self {
        let status = db.status.as_ref();
        let primary = status
            .and_then(|s| {
                s.target_primary
                    .clone()
                    .or_else(|| s.current_primary.clone())
            })
            .unwrap_or_else(|| bootstrap_instance.to_owned());
        Self {
            primary,
            instances: db.spec.instances,
            failover_delay: Duration::from_secs(
                u64::try_from(db.spec.replication.failover_delay_seconds).unwrap_or(5),
            ),
        }
    }

    /// A primary that can confirm neither its role (API) nor a replica for this long
    /// stops accepting writes. It is well under the operator's failover delay, so the
    /// isolated primary is down before anything else is promoted.
    pub fn fence_after(&self) -> Duration {
        (self.failover_delay / 2).max(Duration::from_secs(1))
    }
}

/// What the supervisor does next, from the data directory and the desired primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Start PostgreSQL as it is (a primary, or a replica that the operator promotes).
    Start,
    /// The data directory was a primary's and another instance is the primary now:
    /// rewind it (or clone afresh) and start as a replica.
    Rejoin,
    /// This instance crashed while primary: give the operator the chance to fail over.
    Wait,
}

pub fn next_step(
    me: &str,
    desired: &Desired,
    is_standby: bool,
    crashed_primary_for: Option<Duration>,
) -> Next {
    if desired.primary != me {
        return if is_standby {
            Next::Start
        } else {
            Next::Rejoin
        };
    }
    match crashed_primary_for {
        Some(waited) if desired.instances > 1 && waited < desired.failover_delay * 2 => Next::Wait,
        _ => Next::Start,
    }
}

async fn kube_api(settings: &Settings) -> Option<Api<GeoDatabase>> {
    let client = kube::Client::try_default().await.ok()?;
    Some(Api::namespaced(client, &settings.namespace))
}

/// The GeoDatabase's view, or `None` when the API does not answer within `API_TIMEOUT`.
async fn fetch_desired(api: Option<&Api<GeoDatabase>>, settings: &Settings) -> Option<Desired> {
    let api = api?;
    match tokio::time::timeout(API_TIMEOUT, api.get(&settings.cluster)).await {
        Ok(Ok(db)) => Some(Desired::of(&db, &settings.bootstrap_instance)),
        Ok(Err(error)) => {
            warn!(%error, "cannot read the GeoDatabase");
            None
        }
        Err(_) => {
            warn!("the API server did not answer in time");
            None
        }
    }
}

/// Some replica reported to this primary within `within`.
async fn replica_replied(settings: &Settings, within: Duration) -> bool {
    let query = async {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&settings.socket_dir)
            .port(POSTGRES_PORT as u16)
            .user(SUPERUSER)
            .dbname("postgres")
            .application_name("geodb-instance");
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_stat_replication \
                 WHERE reply_time > now() - make_interval(secs => $1)",
                &[&within.as_secs_f64()],
            )
            .await?;
        Ok::<i64, tokio_postgres::Error>(row.get(0))
    };
    matches!(tokio::time::timeout(API_TIMEOUT, query).await, Ok(Ok(n)) if n > 0)
}

const API_TIMEOUT: Duration = Duration::from_millis(800);
const TICK: Duration = Duration::from_millis(500);

/// PostgreSQL refuses a data directory others can read; the kubelet's fsGroup handling
/// adds group bits when it mounts the volume.
fn restrict_data_directory(settings: &Settings) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&settings.pgdata, std::fs::Permissions::from_mode(0o700)).map_err(
        |source| InstanceError::Read {
            path: settings.pgdata.clone(),
            source,
        },
    )
}

fn is_standby(settings: &Settings) -> bool {
    settings.pgdata.join("standby.signal").exists()
}

/// Turn the data directory of a former primary into a replica of the current one:
/// pg_rewind from the primary, or a fresh clone when rewinding is impossible.
fn rejoin(settings: &Settings, bin: &Path) -> Result<()> {
    let started = Instant::now();
    while !primary_reachable(bin, &settings.rw_host) {
        if started.elapsed() > Duration::from_secs(3600) {
            return Err(InstanceError::PrimaryUnreachable(
                started.elapsed(),
                settings.rw_host.clone(),
            ));
        }
        info!(host = %settings.rw_host, "waiting for the new primary before rewinding");
        std::thread::sleep(Duration::from_secs(1));
    }
    let passfile = std::env::temp_dir().join("geodb-superuser.pgpass");
    write_private(
        &passfile,
        &format!(
            "*:{POSTGRES_PORT}:*:{SUPERUSER}:{}\n",
            pgpass_escape(&settings.password("superuser")?)
        ),
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
        &[],
        None,
    );
    let _ = std::fs::remove_file(&passfile);
    match rewound {
        Ok(()) => info!("pg_rewind done; starting as a replica"),
        Err(error) => {
            // The volume's WAL cannot be matched to the new primary's history; its data
            // is on the new primary already, so a fresh copy is taken.
            warn!(%error, "pg_rewind failed; cloning the primary afresh");
            std::fs::remove_dir_all(&settings.pgdata).map_err(|source| InstanceError::Read {
                path: settings.pgdata.clone(),
                source,
            })?;
            return clone_primary(settings, bin);
        }
    }
    write_private(&settings.pgdata.join("standby.signal"), "")
}

fn pgpass_escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace(':', "\\:")
}

async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| InstanceError::Command {
            command: what.to_owned(),
            detail: e.to_string(),
        })?
}

/// How one run of PostgreSQL ended.
enum Ended {
    /// SIGTERM from the kubelet: the container stops.
    Terminated(ExitStatus),
    /// Another instance is the primary now; this one stopped to rejoin.
    Demoted,
    /// Fenced: no confirmation of the primary role for too long.
    Fenced,
    /// PostgreSQL exited on its own.
    Exited { was_primary: bool },
}

/// Supervise one run of PostgreSQL: follow the desired primary, fence when isolated.
async fn supervise(
    settings: &Settings,
    api: Option<&Api<GeoDatabase>>,
    mut postgres: Postgres,
    term: &mut tokio::signal::unix::Signal,
    mut desired: Desired,
) -> Result<Ended> {
    let mut confirmed = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            // A stop from the kubelet comes before anything else.
            biased;
            _ = term.recv() => {
                info!("SIGTERM: fast shutdown of PostgreSQL");
                return postgres.stop_fast().await.map(Ended::Terminated);
            }
            status = postgres.child.wait() => {
                let status = status.map_err(|e| InstanceError::Command { command: "postgres".into(), detail: e.to_string() })?;
                let was_primary = !is_standby(settings);
                warn!(%status, was_primary, "PostgreSQL exited");
                let left = blocking("reaping", || Ok(leftover_processes::kill_and_reap_children())).await?;
                if left > 0 {
                    warn!(processes = left, "killed the processes the postmaster left behind");
                }
                return Ok(Ended::Exited { was_primary });
            }
            _ = tick.tick() => {
                let primary_now = !is_standby(settings);
                match fetch_desired(api, settings).await {
                    Some(now) => {
                        desired = now;
                        confirmed = Instant::now();
                        if primary_now && desired.primary != settings.instance {
                            info!(new_primary = %desired.primary, "another instance is the primary: stopping to rejoin as a replica");
                            postgres.stop_fast().await?;
                            return Ok(Ended::Demoted);
                        }
                    }
                    None if primary_now && confirmed.elapsed() > desired.fence_after() => {
                        if replica_replied(settings, desired.fence_after()).await {
                            // Replicas still stream from us: we are not the one cut off.
                            confirmed = Instant::now();
                        } else {
                            warn!(after_ms = confirmed.elapsed().as_millis() as u64, "cannot confirm the primary role with the API server or any replica: fencing (immediate shutdown)");
                            postgres.stop_immediate().await?;
                            return Ok(Ended::Fenced);
                        }
                    }
                    None => {}
                }
            }
        }
    }
}

/// Prepare the data directory, then run PostgreSQL in the role the GeoDatabase gives
/// this instance, until the kubelet stops the container.
pub async fn run_instance(settings: Settings) -> Result<ExitStatus> {
    let bin = bin_dir()?;
    let mut term = signal(SignalKind::terminate()).map_err(|e| InstanceError::Command {
        command: "signal".into(),
        detail: e.to_string(),
    })?;
    if let Err(error) = leftover_processes::become_subreaper() {
        warn!(%error, "cannot become a child subreaper: processes a crashed server leaves may outlive it");
    }
    let api = kube_api(&settings).await;
    if api.is_none() {
        warn!("no Kubernetes API access: running in the role the data directory has");
    }
    // Nothing starts before the GeoDatabase says who the primary is.
    let mut desired = loop {
        if api.is_none() {
            break Desired {
                primary: settings.bootstrap_instance.clone(),
                instances: 1,
                failover_delay: Duration::from_secs(5),
            };
        }
        if let Some(desired) = fetch_desired(api.as_ref(), &settings).await {
            break desired;
        }
        tokio::select! {
            _ = term.recv() => return Ok(ExitStatus::default()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };

    let has_data = settings.pgdata.join("PG_VERSION").exists();
    let mode = bootstrap_mode(
        has_data,
        settings.instance == desired.primary && settings.instance == settings.bootstrap_instance,
        settings.bootstrapped(),
    );
    info!(instance = %settings.instance, ?mode, primary = %desired.primary, bin = %bin.display(), "preparing data directory");
    let (prepare, prepare_bin) = (settings.clone(), bin.clone());
    let preparing = blocking("prepare", move || match mode {
        Bootstrap::Existing => Ok(()),
        Bootstrap::Initdb => initdb(&prepare, &prepare_bin),
        Bootstrap::Clone => clone_primary(&prepare, &prepare_bin),
    });
    tokio::select! {
        biased;
        _ = term.recv() => return Ok(ExitStatus::default()),
        prepared = preparing => prepared?,
    }
    write_private(
        &settings.replication_passfile(),
        &format!(
            "*:{POSTGRES_PORT}:*:{REPLICATION_USER}:{}\n",
            pgpass_escape(&settings.password("replication")?)
        ),
    )?;

    let mut crashed_at: Option<Instant> = None;
    loop {
        if let Some(now) = fetch_desired(api.as_ref(), &settings).await {
            desired = now;
        } else if api.is_some() {
            // Without the API this instance cannot know its role: wait for it.
            tokio::select! {
                _ = term.recv() => return Ok(ExitStatus::default()),
                _ = tokio::time::sleep(TICK) => continue,
            }
        }
        match next_step(
            &settings.instance,
            &desired,
            is_standby(&settings),
            crashed_at.map(|t| t.elapsed()),
        ) {
            Next::Wait => {
                tokio::select! {
                    _ = term.recv() => return Ok(ExitStatus::default()),
                    _ = tokio::time::sleep(TICK) => continue,
                }
            }
            Next::Rejoin => {
                info!(primary = %desired.primary, "rejoining as a replica");
                let (s, b) = (settings.clone(), bin.clone());
                tokio::select! {
                    biased;
                    _ = term.recv() => return Ok(ExitStatus::default()),
                    rejoined = blocking("rejoin", move || rejoin(&s, &b)) => rejoined?,
                }
            }
            Next::Start => {}
        }
        crashed_at = None;
        restrict_data_directory(&settings)?;
        info!(standby = is_standby(&settings), primary = %desired.primary, "starting PostgreSQL");
        let started = Instant::now();
        let postgres = Postgres::start(&settings, &bin)?;
        match supervise(
            &settings,
            api.as_ref(),
            postgres,
            &mut term,
            desired.clone(),
        )
        .await?
        {
            Ended::Terminated(status) => return Ok(status),
            Ended::Demoted | Ended::Fenced => {}
            Ended::Exited { was_primary } => {
                if was_primary {
                    crashed_at = Some(Instant::now());
                }
                // A server that cannot start is not restarted in a tight loop.
                if started.elapsed() < Duration::from_secs(1) {
                    tokio::select! {
                        _ = term.recv() => return Ok(ExitStatus::default()),
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                if api.is_none() {
                    return Err(InstanceError::Command {
                        command: "postgres".into(),
                        detail: "exited".into(),
                    });
                }
            }
        }
    }
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

    fn desired(primary: &str) -> Desired {
        Desired {
            primary: primary.into(),
            instances: 3,
            failover_delay: Duration::from_secs(5),
        }
    }

    #[test]
    fn a_former_primary_rejoins_and_a_replica_just_starts() {
        assert_eq!(
            next_step("geo-1", &desired("geo-2"), false, None),
            Next::Rejoin
        );
        assert_eq!(
            next_step("geo-1", &desired("geo-2"), true, None),
            Next::Start
        );
        assert_eq!(
            next_step("geo-2", &desired("geo-2"), true, None),
            Next::Start
        );
        assert_eq!(
            next_step("geo-1", &desired("geo-1"), false, None),
            Next::Start
        );
    }

    #[test]
    fn a_crashed_primary_waits_for_a_failover_unless_alone() {
        let d = desired("geo-1");
        let waited = Some(Duration::from_secs(1));
        assert_eq!(next_step("geo-1", &d, false, waited), Next::Wait);
        assert_eq!(
            next_step("geo-1", &d, false, Some(Duration::from_secs(11))),
            Next::Start
        );
        let alone = Desired { instances: 1, ..d };
        assert_eq!(next_step("geo-1", &alone, false, waited), Next::Start);
    }

    #[test]
    fn fencing_comes_well_before_the_failover_delay() {
        assert_eq!(desired("x").fence_after(), Duration::from_millis(2500));
        let short = Desired {
            failover_delay: Duration::from_secs(1),
            ..desired("x")
        };
        assert_eq!(short.fence_after(), Duration::from_secs(1));
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
