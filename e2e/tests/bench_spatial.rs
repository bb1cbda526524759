//! `geodb bench spatial` against a real PostgreSQL 15 with PostGIS on this host: the
//! sample migrations applied by `geodb migrate`, 20,000 locations by `geodb seed`, then
//! `geodb maintain vacuum`; the bench run as a process.
//!
//! `every_query_uses_its_index`: exit 0, every query's plan named with its index, the
//! JSON line (and `--json-out`) with every figure; two `--target`s get a figure each.
//!
//! `a_dropped_gist_index_fails_the_radius_search`: without `locations_geom_idx` the run
//! fails, naming the radius search and printing its plan.
//!
//! Skips with a message without PostgreSQL 15's server programs or PostGIS
//! (`apt-get install postgresql-15 postgresql-15-postgis-3`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Output, Stdio};

use geodb::pod_contract::env;
use geodb_e2e::hostpg::{
    self, chown_tree, geodb_binary, pg_bin, pg_user, postgis, Postgres, TestDir, JOB_VARS,
};
use geodb_e2e::kube_util::repo_root;
use serde_json::Value;

const QUERIES: [(&str, &str); 5] = [
    ("radius_1km", "locations_geom_idx"),
    ("bbox", "locations_geom_idx"),
    ("knn10", "locations_geom_idx"),
    ("fulltext", "locations_search_idx"),
    ("join_images", "locations_geom_idx+images_location_id_idx"),
];

struct World {
    pg: Postgres,
    bin: PathBuf,
    dir: TestDir,
}

/// A server with database `app`, migrated and seeded with 20,000 locations; `None`
/// (after a message) without PostgreSQL or PostGIS.
async fn seeded(what: &str) -> Option<World> {
    let pg = pg_bin()?;
    if !postgis(&pg) {
        return None;
    }
    let dir = TestDir::new(what);
    let user = pg_user();
    let data = dir.join("data");
    chown_tree(&dir, user);
    hostpg::initdb(&pg, &data, user, &[]);
    let server = Postgres::start(&pg, &data, user, &[], &Default::default());
    let client = server.connect().await;
    client.batch_execute("CREATE DATABASE app").await.unwrap();
    let world = World {
        bin: geodb_binary(&dir),
        pg: server,
        dir,
    };
    let migrations = repo_root().join("config/samples/migrations");
    let out = world
        .run(&["migrate", "--dir", &migrations.display().to_string()])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let out = world
        .run(&["seed", "--count", "20000", "--seed", "7"])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    // As autovacuum would: statistics, and the GIN index's pending list merged (a COPY
    // leaves its entries in a list every search reads through).
    let out = world.run(&["maintain", "vacuum"]).await;
    assert!(out.status.success(), "{}", text(&out));
    Some(world)
}

impl World {
    async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = hostpg::geodb_command(&self.bin);
        for var in JOB_VARS {
            cmd.env_remove(var);
        }
        cmd.args(args)
            .current_dir(&*self.dir)
            .env(env::PGHOST, &self.pg.socket_dir)
            .env(env::PGPORT, self.pg.port.to_string())
            .env(env::PGUSER, "postgres")
            .env(env::DATABASE, "app")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.output().await.unwrap()
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
}

fn text(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The last stdout line as JSON.
fn last_json(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {last:?}\n{}", text(out)))
}

fn figure(json: &Value, key: &str) -> f64 {
    json["figures"][key]
        .as_f64()
        .unwrap_or_else(|| panic!("no figure {key} in {json}"))
}

#[tokio::test]
async fn every_query_uses_its_index() {
    let Some(world) = seeded("bench-spatial").await else {
        return;
    };
    let json_out = world.dir.join("spatial.json");
    let out = world
        .run(&[
            "bench",
            "spatial",
            "--iterations",
            "50",
            "--compare-no-index",
            "--no-index-iterations",
            "5",
            "--json-out",
            &json_out.display().to_string(),
        ])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let json = last_json(&out);
    for (query, index) in QUERIES {
        assert_eq!(json["plans"][query], index, "{json}");
        let p50 = figure(&json, &format!("{query}_direct_p50_ms"));
        let p99 = figure(&json, &format!("{query}_direct_p99_ms"));
        assert!(p50 > 0.0 && p50 <= p99, "{query}: {json}");
    }
    assert!(figure(&json, "radius_no_index_p50_ms") > 0.0);
    assert!(figure(&json, "radius_no_index_ratio") > 1.0, "{json}");
    assert_eq!(json["figures"]["rows_count"], 20_000);
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&json_out).unwrap()).unwrap();
    assert_eq!(written, json);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("query") && stdout.contains("radius_1km"),
        "{stdout}"
    );

    // Two named targets (the same socket): a figure each, no TLS name on a socket.
    let socket = format!("{}:{}", world.pg.socket_dir.display(), world.pg.port);
    let out = world
        .run(&[
            "bench",
            "spatial",
            "--iterations",
            "5",
            "--warmup",
            "1",
            "--target",
            &format!("primary={socket}"),
            "--target",
            &format!("again={socket}:ignored.example"),
        ])
        .await;
    assert!(out.status.success(), "{}", text(&out));
    let json = last_json(&out);
    for target in ["primary", "again"] {
        figure(&json, &format!("knn10_{target}_p99_ms"));
    }
    assert!(
        json["figures"].get("knn10_direct_p99_ms").is_none(),
        "{json}"
    );
    assert!(
        json["figures"].get("radius_no_index_ratio").is_none(),
        "{json}"
    );
}

#[tokio::test]
async fn a_dropped_gist_index_fails_the_radius_search() {
    let Some(world) = seeded("bench-spatial-nogist").await else {
        return;
    };
    world
        .app()
        .await
        .batch_execute("DROP INDEX locations_geom_idx")
        .await
        .unwrap();
    let out = world.run(&["bench", "spatial", "--iterations", "5"]).await;
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("query radius_1km on direct does not use locations_geom_idx; its plan:"),
        "{}",
        text(&out)
    );
    assert!(stderr.contains("\"Node Type\": \"Seq Scan\""), "{stderr}");
    // Nothing was measured: no JSON line.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("\"figures\""), "{stdout}");
}
