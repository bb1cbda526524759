//! The contract between the instance StatefulSet (`builders::instance`) and the agent
//! that runs in its pod (`agent`): environment variables, mount points, file names and
//! the user id. Both sides take every such name from here, so they cannot drift; a test
//! in `agent::settings` renders a StatefulSet and reads its environment back.

/// UID/GID of the `postgres` user in the geodb PostGIS image.
pub const POSTGRES_UID: i64 = 999;

/// Mount point of the data volume (the PVC).
pub const DATA_DIR: &str = "/var/lib/postgresql/data";
/// The PostgreSQL data directory, inside the data volume.
pub const PGDATA: &str = "/var/lib/postgresql/data/pgdata";
/// Name prefix of a data directory set aside on the data volume (beside `PGDATA`) when a
/// former primary could not be rewound: `pgdata.kept-<UTC time>`. It is never removed by
/// geodb; the operator reports it.
pub const KEPT_DATA_PREFIX: &str = "pgdata.kept-";
/// How the agent's termination message starts when PostgreSQL refused to start.
pub const REFUSED_PREFIX: &str = "PostgreSQL refused to start: ";
/// The Event reason of an instance that waits for a human (its data kept aside, a
/// rewind failed again); the agent publishes it again every `PARKED_RETELL` while it
/// waits, and the operator reports one younger than `PARKED_FRESH` as Degraded.
pub const INSTANCE_PARKED: &str = "InstanceParked";
pub const PARKED_RETELL: std::time::Duration = std::time::Duration::from_secs(300);
pub const PARKED_FRESH: std::time::Duration = std::time::Duration::from_secs(660);
/// Mount point of the instance ConfigMap.
pub const CONFIG_DIR: &str = "/etc/geodb/config";
/// Mount point of the credentials (one directory per role, see [`Credential`]).
pub const SECRETS_DIR: &str = "/etc/geodb/secrets";
/// Unix socket directory (an emptyDir: the root filesystem is read-only).
pub const SOCKET_DIR: &str = "/var/run/postgresql";
/// Scratch space (an emptyDir).
pub const TMP_DIR: &str = "/tmp";
/// Shared memory (a memory-backed emptyDir).
pub const SHM_DIR: &str = "/dev/shm";

/// Files of the instance ConfigMap.
pub const POSTGRESQL_CONF: &str = "postgresql.conf";
pub const PG_HBA_CONF: &str = "pg_hba.conf";
pub const PG_IDENT_CONF: &str = "pg_ident.conf";
/// ConfigMap key set to `true` once the cluster's first primary has run: from then on an
/// instance with an empty volume clones the primary instead of running initdb. It is not
/// part of the configuration hash, so setting it rolls no pod.
pub const BOOTSTRAPPED_KEY: &str = "bootstrapped";

/// The agent's HTTP port: `GET` [`VOLUME_PATH`] tells what the data volume holds.
pub const AGENT_PORT: i32 = 8008;
pub const VOLUME_PATH: &str = "/volume";
/// `GET` here on [`AGENT_PORT`]: the instance's metrics (Prometheus text format).
pub const METRICS_PATH: &str = "/metrics";
/// Where `spec.monitoring.customQueries` is mounted (its key `queries.yaml`).
pub const MONITORING_DIR: &str = "/etc/geodb/monitoring";
/// The key of that ConfigMap, and the file it becomes.
pub const CUSTOM_QUERIES_FILE: &str = "queries.yaml";

/// What an instance's data volume holds, from `pg_controldata` (the answer at
/// [`VOLUME_PATH`]): how far its history goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeReport {
    /// A data directory exists.
    pub data: bool,
    /// The timeline of its latest checkpoint.
    pub timeline: Option<u32>,
    /// The furthest WAL position it records (latest checkpoint, or the minimum recovery
    /// end of a replica), as `X/Y`.
    pub lsn: Option<String>,
    /// `Database cluster state`, as pg_controldata says it.
    pub state: Option<String>,
}

/// Key of the password in each credential directory (and in the credential Secrets).
pub const PASSWORD_FILE: &str = "password";

/// The roles whose passwords are mounted, each in a directory of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    Superuser,
    Replication,
    App,
    /// The pooler's lookup role (`auth_user` of PgBouncer).
    Pooler,
}

impl Credential {
    pub const ALL: [Credential; 4] = [
        Credential::Superuser,
        Credential::Replication,
        Credential::App,
        Credential::Pooler,
    ];

    /// Directory under [`SECRETS_DIR`].
    pub fn dir(self) -> &'static str {
        match self {
            Credential::Superuser => "superuser",
            Credential::Replication => "replication",
            Credential::App => "app",
            Credential::Pooler => "pooler",
        }
    }

    /// Path of the password file relative to [`SECRETS_DIR`].
    pub fn password_path(self) -> String {
        format!("{}/{PASSWORD_FILE}", self.dir())
    }
}

/// Environment variables of the instance container.
pub mod env {
    pub const CLUSTER: &str = "GEODB_CLUSTER";
    pub const INSTANCE: &str = "GEODB_INSTANCE";
    pub const POD_NAME: &str = "POD_NAME";
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
    /// The instance that runs initdb when the cluster is new.
    pub const BOOTSTRAP_INSTANCE: &str = "GEODB_BOOTSTRAP_INSTANCE";
    /// The read-write Service: replicas clone and stream from it.
    pub const RW_HOST: &str = "GEODB_RW_HOST";
    /// This instance's replication slot on the primary.
    pub const SLOT: &str = "GEODB_SLOT";
    pub const DATABASE: &str = "GEODB_DATABASE";
    pub const DATABASE_OWNER: &str = "GEODB_DATABASE_OWNER";
    pub const CONFIG_DIR: &str = "GEODB_CONFIG_DIR";
    pub const SECRETS_DIR: &str = "GEODB_SECRETS_DIR";
    /// PostgreSQL's own variables, so `psql` in the container needs no arguments.
    pub const PGDATA: &str = "PGDATA";
    pub const PGHOST: &str = "PGHOST";
    /// As libpq's: the address dialled, [`PGHOST`] then only the name verify-full checks
    /// (a client outside cluster DNS reaching a Service by its ClusterIP).
    pub const PGHOSTADDR: &str = "PGHOSTADDR";
    pub const PGPORT: &str = "PGPORT";

    /// The WAL archive (`spec.backup`), read by `geodb wal-push` and `geodb wal-fetch`.
    pub const S3_ENDPOINT: &str = "GEODB_S3_ENDPOINT";
    pub const S3_BUCKET: &str = "GEODB_S3_BUCKET";
    /// Path inside the bucket.
    pub const S3_PREFIX: &str = "GEODB_S3_PREFIX";
    pub const S3_REGION: &str = "GEODB_S3_REGION";
    pub const S3_PATH_STYLE: &str = "GEODB_S3_PATH_STYLE";
    /// Files holding the access key (mounted from the user's Secret).
    pub const S3_ACCESS_KEY_ID_FILE: &str = "GEODB_S3_ACCESS_KEY_ID_FILE";
    pub const S3_SECRET_ACCESS_KEY_FILE: &str = "GEODB_S3_SECRET_ACCESS_KEY_FILE";
    /// A PEM CA bundle for a private CA.
    pub const S3_CA_FILE: &str = "GEODB_S3_CA_FILE";
    pub const WAL_COMPRESSION: &str = "GEODB_WAL_COMPRESSION";

    /// `geodb backup` (the backup Job): the server to copy, its replication login, how
    /// long to wait for the backup's last WAL segment to be archived, and the retention
    /// applied after a backup.
    pub const BACKUP_HOST: &str = "GEODB_BACKUP_HOST";
    pub const BACKUP_PORT: &str = "GEODB_BACKUP_PORT";
    pub const BACKUP_USER: &str = "GEODB_BACKUP_USER";
    pub const BACKUP_PASSWORD_FILE: &str = "GEODB_BACKUP_PASSWORD_FILE";
    pub const BACKUP_WAL_WAIT_SECONDS: &str = "GEODB_BACKUP_WAL_WAIT_SECONDS";
    pub const BACKUP_RETENTION_WINDOW: &str = "GEODB_BACKUP_RETENTION_WINDOW";
    pub const BACKUP_RETENTION_COUNT: &str = "GEODB_BACKUP_RETENTION_COUNT";
    /// `geodb dump` (the dump Job) connects with the `BACKUP_` variables above (as the
    /// superuser) and keeps this many complete dumps.
    pub const DUMP_KEEP: &str = "GEODB_DUMP_KEEP";

    /// The one-shot Job commands (`geodb migrate`, `geodb seed`) connect with
    /// [`PGHOST`] (a host name, or a socket directory when it starts with `/`),
    /// [`PGPORT`], [`DATABASE`] and these: libpq's names where libpq has one, so `psql`
    /// in the same container reaches the same server.
    pub const PGUSER: &str = "PGUSER";
    /// `verify-full` (the default over TCP) or `disable`.
    pub const PGSSLMODE: &str = "PGSSLMODE";
    /// The CA a `verify-full` connection trusts; `<TLS_DIR>/ca.crt` when unset.
    pub const PGSSLROOTCERT: &str = "PGSSLROOTCERT";
    /// The login's password, in a file (a mounted Secret key), never in the environment.
    pub const JOB_PASSWORD_FILE: &str = "GEODB_PASSWORD_FILE";

    /// The recovery target of a cluster bootstrapped from another's backups
    /// (`spec.bootstrap.recovery`): `latest`, `time:<RFC 3339>`, `lsn:<X/Y>` or
    /// `name:<restore point>`.
    pub const RECOVERY_TARGET: &str = "GEODB_RECOVERY_TARGET";

    /// The source archive of a recovery has the same variables as the own archive, under
    /// `GEODB_RECOVERY_` (`GEODB_RECOVERY_S3_ENDPOINT`, ...): `geodb wal-fetch --source
    /// recovery` reads those.
    pub fn recovery(name: &str) -> String {
        match name.strip_prefix("GEODB_") {
            Some(rest) => format!("GEODB_RECOVERY_{rest}"),
            None => name.to_owned(),
        }
    }
}

/// `geodb wal-push` writes its last error here, on the data volume (beside `pgdata/`), and
/// removes it after a success; the operator's probe reads it (`pg_read_file`).
pub const ARCHIVE_ERROR_FILE: &str = "geodb-archive-error";

/// Keys of a TLS Secret (the usual `kubernetes.io/tls` names, plus the CA's), which are
/// also the file names under [`TLS_DIR`].
/// Where a container's termination message is read from (the kubelet's default path).
pub const TERMINATION_LOG: &str = "/dev/termination-log";
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const CA_CERT: &str = "ca.crt";
/// Where the server certificate, its key and the cluster's CA are mounted, under
/// [`SECRETS_DIR`] (the directory is also `/etc/geodb/secrets/tls` in Jobs, with the CA
/// only).
pub const TLS_SUBDIR: &str = "tls";
pub const TLS_DIR: &str = "/etc/geodb/secrets/tls";

/// What every libpq connection over the network adds: TLS, the server's chain checked
/// against the cluster's CA and its name against the host (`verify-full`).
pub fn libpq_tls() -> String {
    format!("sslmode=verify-full sslrootcert={TLS_DIR}/{CA_CERT}")
}

/// Where the object store's access key and CA are mounted, under [`SECRETS_DIR`].
pub const S3_ACCESS_KEY_ID_PATH: &str = "s3/access-key-id";
pub const S3_SECRET_ACCESS_KEY_PATH: &str = "s3/secret-access-key";
pub const S3_CA_PATH: &str = "s3/ca.crt";
/// The same for the source archive of a recovery.
pub const S3_RECOVERY_ACCESS_KEY_ID_PATH: &str = "s3-recovery/access-key-id";
pub const S3_RECOVERY_SECRET_ACCESS_KEY_PATH: &str = "s3-recovery/secret-access-key";
pub const S3_RECOVERY_CA_PATH: &str = "s3-recovery/ca.crt";
