//! The one-shot Job commands against a real PostgreSQL 15 with PostGIS on this host,
//! `geodb migrate` and `geodb seed` run as processes.
//!
//! `migrate_samples_then_refusals`: the sample migrations apply (their indexes have the
//! right access methods, `geometry_columns` says POINT 4326, the status CHECK holds); a
//! second run is `unchanged`; a changed applied file fails naming it and applies
//! nothing (not even a valid new file); a new file with a syntax error after a valid
//! `CREATE TABLE` fails naming the file and its line and leaves no trace; once fixed
//! it applies.
//!
//! `concurrent_runs_take_turns`: two runs started while the test holds the migration
//! lock both wait; released, one applies everything and the other finds it done.
//!
//! `seed_loads_rows_within_bounds`: `geodb seed --count 10000` after the migrations:
//! the rows, their relations, their cities' bounds; loaded in bulk into the empty tables
//! with every index and foreign key made again, and row by row into tables with rows.
//!
//! `migrate_over_verify_full_tls`: over TCP with a password file and `verify-full`
//! against the server's CA; a CA that did not sign the server's certificate fails at
//! once.
//!
//! The timing of a 1,000,000-row seed is `make bench-spatial`'s (`at_1m_seed_s`).
//!
//! Skips with a message without PostgreSQL 15's server programs or PostGIS
//! (`apt-get install postgresql-15 postgresql-15-postgis-3`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use geodb::jobs::migrate::Outcome;
use geodb::jobs::seed::{Summary, HANOI, HO_CHI_MINH_CITY};
use geodb::pod_contract::env;
use geodb_e2e::hostpg::{
    self, chown_tree, geodb_binary, pg_bin, pg_user, postgis, Postgres, TestDir, JOB_VARS,
};
use geodb_e2e::kube_util::{repo_root, wait_for};

/// A server of one test, the `geodb` binary, the test's directory.
struct World {
    pg: Postgres,
    bin: PathBuf,
    dir: TestDir,
}

/// A fresh server with a database `app`, or `None` (after a message).
async fn start(what: &str, settings: &[String]) -> Option<World> {
    start_with(what, |_| settings.to_vec()).await
}

/// [`start`] with the settings `prepare` returns after writing what they name into the
/// test's directory.
async fn start_with(what: &str, prepare: impl FnOnce(&Path) -> Vec<String>) -> Option<World> {
    let pg = pg_bin()?;
    if !postgis(&pg) {
        return None;
    }
    let dir = TestDir::new(what);
    let user = pg_user();
    let data = dir.join("data");
    let settings = prepare(&dir);
    chown_tree(&dir, user);
    hostpg::initdb(&pg, &data, user, &[]);
    let server = Postgres::start(&pg, &data, user, &settings, &Default::default());
    let client = server.connect().await;
    client.batch_execute("CREATE DATABASE app").await.unwrap();
    let bin = geodb_binary(&dir);
    Some(World {
        pg: server,
        bin,
        dir,
    })
}

impl World {
    /// The Job's variables for the socket (no TLS there).
    fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            (env::PGHOST, self.pg.socket_dir.display().to_string()),
            (env::PGPORT, self.pg.port.to_string()),
            (env::PGUSER, "postgres".to_owned()),
            (env::DATABASE, "app".to_owned()),
        ]
    }

    fn command(&self, vars: &[(&str, String)], args: &[&str]) -> tokio::process::Command {
        let mut cmd = hostpg::geodb_command(&self.bin);
        for var in JOB_VARS {
            cmd.env_remove(var);
        }
        cmd.args(args)
            .current_dir(&*self.dir)
            .envs(vars.iter().map(|(k, v)| (*k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// `geodb migrate --dir <dir>`: the process's output and its outcome line.
    async fn migrate(&self, dir: &Path) -> (Output, Outcome) {
        let out = self
            .command(
                &self.vars(),
                &["migrate", "--dir", &dir.display().to_string()],
            )
            .output()
            .await
            .unwrap();
        let outcome = outcome(&out);
        (out, outcome)
    }

    async fn app(&self) -> tokio_postgres::Client {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.pg.socket_dir)
            .port(self.pg.port)
            .user("postgres")
            .dbname("app");
        let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }

    /// A copy of the sample migrations to change.
    fn samples(&self, name: &str) -> PathBuf {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let samples = repo_root().join("config/samples/migrations");
        for entry in std::fs::read_dir(samples).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
        dir
    }
}

/// The last stdout line, which must be the outcome; the exit code must agree.
fn outcome(out: &Output) -> Outcome {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let outcome: Outcome = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "last line {last:?} is not an outcome: {e}\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(out.status.success(), outcome.succeeded(), "{stdout}");
    outcome
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn scalar<T>(client: &tokio_postgres::Client, sql: &str) -> T
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// Each index's access method, and whether it is on an expression.
async fn index_methods(client: &tokio_postgres::Client) -> Vec<(String, String, bool)> {
    let rows = client
        .query(
            "SELECT c.relname::text, am.amname::text, x.indexprs IS NOT NULL
               FROM pg_index x
               JOIN pg_class c ON c.oid = x.indexrelid
               JOIN pg_am am ON am.oid = c.relam
               JOIN pg_class t ON t.oid = x.indrelid
              WHERE t.relname IN ('locations', 'images', 'moderation_logs')
              ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

async fn check_schema(client: &tokio_postgres::Client) {
    let expected = [
        ("images_location_id_idx", "btree", false),
        ("images_pkey", "btree", false),
        ("locations_category_idx", "btree", false),
        ("locations_created_at_idx", "btree", false),
        ("locations_geom_idx", "gist", false),
        ("locations_pkey", "btree", false),
        ("locations_search_idx", "gin", true),
        ("locations_status_idx", "btree", false),
        ("moderation_logs_location_id_idx", "btree", false),
        ("moderation_logs_pkey", "btree", false),
    ];
    let expected: Vec<(String, String, bool)> = expected
        .iter()
        .map(|(n, m, e)| (n.to_string(), m.to_string(), *e))
        .collect();
    assert_eq!(index_methods(client).await, expected);
    let row = client
        .query_one(
            "SELECT type, srid FROM geometry_columns
              WHERE f_table_name = 'locations' AND f_geometry_column = 'geom'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i32>(1)),
        ("POINT".to_owned(), 4326)
    );
    let refused = client
        .batch_execute(
            "INSERT INTO locations (name, category, status, owner, geom)
             VALUES ('x', 'cafe', 'bogus', 'u', 'SRID=4326;POINT(106.7 10.8)')",
        )
        .await
        .unwrap_err();
    assert!(
        format!("{refused:?}").contains("locations_status_check"),
        "{refused:?}"
    );
}

async fn recorded(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT version FROM geodb_migrations ORDER BY applied_at, version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn table_exists(client: &tokio_postgres::Client, name: &str) -> bool {
    let sql = format!("SELECT to_regclass('public.{name}') IS NOT NULL");
    scalar(client, &sql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_samples_then_refusals() {
    let Some(world) = start("jobs-migrate", &[]).await else {
        return;
    };
    let dir = world.samples("migrations");
    let (_, first) = world.migrate(&dir).await;
    assert_eq!(first.outcome, "applied", "{first:?}");
    assert_eq!(first.applied, strings(&["1", "2", "3", "4", "5"]));
    assert_eq!(first.version.as_deref(), Some("5"));
    assert_eq!((first.error, first.reason), (None, None));
    let client = world.app().await;
    check_schema(&client).await;
    assert_eq!(recorded(&client).await, strings(&["1", "2", "3", "4", "5"]));

    let (_, again) = world.migrate(&dir).await;
    assert_eq!(again.outcome, "unchanged", "{again:?}");
    assert!(again.applied.is_empty());
    assert_eq!(again.version.as_deref(), Some("5"));

    // A changed applied file stops the run before the valid new one.
    let v2 = dir.join("V2__locations.sql");
    let original = std::fs::read_to_string(&v2).unwrap();
    std::fs::write(&v2, format!("{original}-- edited\n")).unwrap();
    std::fs::write(dir.join("V6__tags.sql"), "CREATE TABLE tags (id int);\n").unwrap();
    let (out, changed) = world.migrate(&dir).await;
    assert_eq!(changed.outcome, "failed");
    assert_eq!(changed.reason.as_deref(), Some("checksum_mismatch"));
    let error = changed.error.unwrap();
    assert!(
        error.contains("V2__locations.sql (version 2) changed"),
        "{error}"
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(changed.applied.is_empty());
    assert!(!table_exists(&client, "tags").await);
    assert_eq!(recorded(&client).await.len(), 5);
    std::fs::write(&v2, &original).unwrap();
    std::fs::remove_file(dir.join("V6__tags.sql")).unwrap();

    // A broken file is rolled back whole: its valid first statement too.
    std::fs::write(
        dir.join("V6__broken.sql"),
        "CREATE TABLE broken_v6 (id int);\n\nSELEC 1;\n",
    )
    .unwrap();
    let (out, broken) = world.migrate(&dir).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(broken.outcome, "failed");
    assert_eq!(broken.reason.as_deref(), Some("apply_failed"));
    assert_eq!(broken.version.as_deref(), Some("5"));
    let error = broken.error.unwrap();
    for part in [
        "V6__broken.sql",
        "syntax error",
        "line 3, column 1",
        "42601",
    ] {
        assert!(error.contains(part), "{part}: {error}");
    }
    assert!(!table_exists(&client, "broken_v6").await);
    assert_eq!(recorded(&client).await.len(), 5);

    // Fixed, it applies; a removed applied file is only logged.
    std::fs::remove_file(dir.join("V6__broken.sql")).unwrap();
    std::fs::write(
        dir.join("V6__fixed.sql"),
        "CREATE TABLE fixed_v6 (id int);\n",
    )
    .unwrap();
    std::fs::remove_file(dir.join("V1__extensions.sql")).unwrap();
    let (out, fixed) = world.migrate(&dir).await;
    assert_eq!(fixed.outcome, "applied", "{fixed:?}");
    assert_eq!(fixed.applied, strings(&["6"]));
    assert_eq!(fixed.version.as_deref(), Some("6"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no longer given"));
    assert!(table_exists(&client, "fixed_v6").await);
    let row = client
        .query_one(
            "SELECT description, length(checksum), duration_ms >= 0, applied_at <= now()
               FROM geodb_migrations WHERE version = '6'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "fixed");
    assert_eq!(row.get::<_, i32>(1), 64);
    assert!(row.get::<_, bool>(2) && row.get::<_, bool>(3));
}

/// How many sessions wait for the migration lock.
async fn lock_waiters(client: &tokio_postgres::Client) -> i64 {
    let sql = format!(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
            AND ((classid::bigint << 32) | objid::bigint) = {}",
        geodb::jobs::migrate::db::LOCK_KEY
    );
    scalar(client, &sql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_take_turns() {
    let Some(world) = start("jobs-concurrent", &[]).await else {
        return;
    };
    let dir = world.samples("migrations");
    std::fs::write(
        dir.join("V6__slow.sql"),
        "CREATE TABLE slow_v6 (id int);\nSELECT pg_sleep(1);\n",
    )
    .unwrap();
    let holder = world.app().await;
    holder
        .execute(
            "SELECT pg_advisory_lock($1)",
            &[&geodb::jobs::migrate::db::LOCK_KEY],
        )
        .await
        .unwrap();
    let dir_arg = dir.display().to_string();
    let runs: Vec<_> = (0..2)
        .map(|_| {
            world
                .command(&world.vars(), &["migrate", "--dir", &dir_arg])
                .spawn()
                .unwrap()
        })
        .collect();
    wait_for(
        "both runs waiting for the lock",
        Duration::from_secs(30),
        || async { (lock_waiters(&holder).await == 2).then_some(()) },
    )
    .await
    .unwrap();
    holder
        .execute(
            "SELECT pg_advisory_unlock($1)",
            &[&geodb::jobs::migrate::db::LOCK_KEY],
        )
        .await
        .unwrap();
    let mut outcomes = Vec::new();
    for run in runs {
        let out = run.wait_with_output().await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            stdout.contains("another run holds the migration lock"),
            "{stdout}"
        );
        outcomes.push(outcome(&out));
    }
    outcomes.sort_by(|a, b| a.outcome.cmp(&b.outcome));
    assert_eq!(outcomes[0].outcome, "applied", "{outcomes:?}");
    assert_eq!(
        outcomes[0].applied,
        strings(&["1", "2", "3", "4", "5", "6"])
    );
    assert_eq!(outcomes[1].outcome, "unchanged", "{outcomes:?}");
    assert_eq!(outcomes[1].version.as_deref(), Some("6"));
    assert_eq!(recorded(&holder).await.len(), 6);
}

/// `geodb seed args…` after the sample migrations; its summary.
async fn seed(world: &World, args: &[&str]) -> Summary {
    let (_, migrated) = world
        .migrate(&repo_root().join("config/samples/migrations"))
        .await;
    assert!(migrated.succeeded(), "{migrated:?}");
    let mut full = vec!["seed"];
    full.extend_from_slice(args);
    let out = world.command(&world.vars(), &full).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not a terminal: no progress bar.
    assert!(!String::from_utf8_lossy(&out.stderr).contains("locations,"));
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_loads_rows_within_bounds() {
    let Some(world) = start("jobs-seed", &[]).await else {
        return;
    };
    let summary = seed(&world, &["--count", "10000", "--seed", "42"]).await;
    assert_eq!(summary.locations, 10_000);
    assert!((9_000..11_000).contains(&summary.images), "{summary:?}");
    let client = world.app().await;
    let count = |table: &str| {
        let sql = format!("SELECT count(*) FROM {table}");
        let client = &client;
        async move { scalar::<i64>(client, &sql).await as u64 }
    };
    assert_eq!(count("locations").await, 10_000);
    assert_eq!(count("images").await, summary.images);
    assert_eq!(count("moderation_logs").await, summary.moderation_logs);
    let inside = |b: geodb::jobs::seed::Bounds| {
        format!(
            "ST_X(geom) BETWEEN {} AND {} AND ST_Y(geom) BETWEEN {} AND {}",
            b.lon.0, b.lon.1, b.lat.0, b.lat.1
        )
    };
    let (hcmc, hanoi) = (inside(HO_CHI_MINH_CITY), inside(HANOI));
    let sql = format!(
        "SELECT count(*) FILTER (WHERE {hcmc}), count(*) FILTER (WHERE {hanoi}),
                count(*) FILTER (WHERE NOT ({hcmc}) AND NOT ({hanoi})),
                count(*) FILTER (WHERE ST_SRID(geom) <> 4326),
                count(*) FILTER (WHERE created_at < now() - interval '366 days' OR created_at > now()),
                count(DISTINCT category), count(DISTINCT status)
           FROM locations"
    );
    let row = client.query_one(&sql, &[]).await.unwrap();
    let (in_hcmc, in_hanoi): (i64, i64) = (row.get(0), row.get(1));
    assert!(
        (4_000..=6_000).contains(&in_hcmc),
        "{in_hcmc} in Ho Chi Minh City"
    );
    assert_eq!(in_hcmc + in_hanoi, 10_000);
    assert_eq!(row.get::<_, i64>(2), 0, "points outside both cities");
    assert_eq!(row.get::<_, i64>(3), 0, "points not in SRID 4326");
    assert_eq!(row.get::<_, i64>(4), 0, "created_at outside the past year");
    assert_eq!(row.get::<_, i64>(5), 8);
    assert_eq!(row.get::<_, i64>(6), 3);
    // Pending places have no decision; every other has one.
    let undecided: i64 = scalar(
        &client,
        "SELECT count(*) FROM locations l WHERE (status = 'pending') =
            EXISTS (SELECT 1 FROM moderation_logs m WHERE m.location_id = l.id)",
    )
    .await;
    assert_eq!(undecided, 0);
    // The words are searchable through the GIN index's expression.
    let found: i64 = scalar(
        &client,
        "SELECT count(*) FROM locations WHERE to_tsvector('simple', name || ' ' ||
            coalesce(description, '')) @@ plainto_tsquery('simple', 'pho hanoi')",
    )
    .await;
    assert!(found > 0);

    // Empty tables of the role's: loaded in bulk, every index and foreign key made again.
    assert!(summary.bulk, "{summary:?}");
    let indexes: String = scalar(
        &client,
        "SELECT string_agg(c.relname || ':' || am.amname, ' ' ORDER BY c.relname)
           FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam
          WHERE i.indrelid IN ('locations'::regclass, 'images'::regclass, 'moderation_logs'::regclass)",
    )
    .await;
    assert_eq!(
        indexes,
        "images_location_id_idx:btree images_pkey:btree locations_category_idx:btree \
         locations_created_at_idx:btree locations_geom_idx:gist locations_pkey:btree \
         locations_search_idx:gin locations_status_idx:btree \
         moderation_logs_location_id_idx:btree moderation_logs_pkey:btree"
    );
    let foreign_keys: String = scalar(
        &client,
        "SELECT string_agg(conrelid::regclass || ' ' || pg_get_constraintdef(oid), '; ' ORDER BY conrelid::regclass::text)
           FROM pg_constraint WHERE contype = 'f' AND confrelid = 'locations'::regclass AND convalidated",
    )
    .await;
    assert_eq!(
        foreign_keys,
        "images FOREIGN KEY (location_id) REFERENCES locations(id) ON DELETE CASCADE; \
         moderation_logs FOREIGN KEY (location_id) REFERENCES locations(id) ON DELETE CASCADE"
    );
    // Tables with rows: the row path, beside what is there.
    let out = world
        .command(&world.vars(), &["seed", "--count", "2000"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let more: Summary =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert!(!more.bulk, "{more:?}");
    assert_eq!(count("locations").await, 12_000);
    assert_eq!(count("images").await, summary.images + more.images);
}

/// A CA, and a server certificate for `localhost` signed by it, in `dir/tls`.
fn write_tls(dir: &Path) -> geodb::certs::Issued {
    use std::os::unix::fs::PermissionsExt as _;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let ca = geodb::certs::new_ca("geo", "test", now).unwrap();
    let server =
        geodb::certs::issue_server(&ca, "geo", "test", &["localhost".to_owned()], now).unwrap();
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    std::fs::write(tls.join("ca.crt"), &ca.cert_pem).unwrap();
    std::fs::write(tls.join("tls.crt"), &server.cert_pem).unwrap();
    std::fs::write(tls.join("tls.key"), &server.key_pem).unwrap();
    std::fs::set_permissions(tls.join("tls.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    ca
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_over_verify_full_tls() {
    let Some(world) = start_with("jobs-tls", |dir| {
        write_tls(dir);
        // Over TCP only TLS with a password; the socket trusts (the test's own
        // connections).
        std::fs::write(
            dir.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        let tls = dir.join("tls");
        vec![
            "listen_addresses=127.0.0.1".to_owned(),
            "ssl=on".to_owned(),
            format!("ssl_cert_file={}", tls.join("tls.crt").display()),
            format!("ssl_key_file={}", tls.join("tls.key").display()),
            format!("hba_file={}", dir.join("pg_hba.conf").display()),
        ]
    })
    .await
    else {
        return;
    };
    let client = world.app().await;
    client
        .batch_execute("ALTER ROLE postgres PASSWORD 'not-in-any-log'")
        .await
        .unwrap();
    let secrets = world.dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("password"), "not-in-any-log\n").unwrap();
    std::fs::write(secrets.join("wrong"), "wrong\n").unwrap();
    let other_ca = TestDir::new("jobs-tls-other");
    write_tls(&other_ca);
    let samples = repo_root()
        .join("config/samples/migrations")
        .display()
        .to_string();
    let run = |password: &str, ca: PathBuf| {
        let vars = vec![
            (env::PGHOST, "localhost".to_owned()),
            (env::PGPORT, world.pg.port.to_string()),
            (env::PGUSER, "postgres".to_owned()),
            (env::DATABASE, "app".to_owned()),
            (
                env::JOB_PASSWORD_FILE,
                secrets.join(password).display().to_string(),
            ),
            (env::PGSSLROOTCERT, ca.display().to_string()),
        ];
        let mut cmd = world.command(&vars, &["migrate", "--dir", &samples]);
        async move {
            let started = std::time::Instant::now();
            let out = cmd.output().await.unwrap();
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                !all.contains("not-in-any-log"),
                "the password was printed: {all}"
            );
            (outcome(&out), started.elapsed())
        }
    };
    // Neither is retried: they would not pass by waiting.
    let (refused, took) = run("password", other_ca.join("tls/ca.crt")).await;
    assert_eq!(refused.reason.as_deref(), Some("connect"), "{refused:?}");
    assert!(
        refused.error.as_deref().unwrap().contains("certificate"),
        "{refused:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    let (refused, took) = run("wrong", world.dir.join("tls/ca.crt")).await;
    assert_eq!(refused.reason.as_deref(), Some("connect"), "{refused:?}");
    assert!(
        refused.error.as_deref().unwrap().contains("password"),
        "{refused:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(!table_exists(&client, "locations").await);

    let (applied, _) = run("password", world.dir.join("tls/ca.crt")).await;
    assert_eq!(applied.outcome, "applied", "{applied:?}");
    assert_eq!(applied.version.as_deref(), Some("5"));
}
