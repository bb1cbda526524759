//! Migrations in both modes. Built-in: the sample schema applied by a Job from a
//! ConfigMap; a second run is a no-op; a broken file is rolled back, named in the
//! `Migrated` condition and leaves the schema as it was. Image: the sample Alembic project's
//! image (`images/build.sh alembic`) applies the same schema; a second run is a no-op; a
//! failing command's error reaches the condition.

use std::collections::BTreeMap;
use std::time::Duration;

use geodb::api::GeoDatabase;
use geodb_e2e::conn::{connect, connection_for};
use geodb_e2e::kube_util::{repo_root, wait_for};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};

fn sample_files() -> BTreeMap<String, String> {
    let dir = repo_root().join("config/samples/migrations");
    std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// `Migrated` once its status and reason are these for a run other than `not_job`:
/// its message and the run's Job.
async fn migrated(
    (api, name): (&Api<GeoDatabase>, &str),
    (status, reason): (&str, &str),
    after: &str,
    not_job: Option<&str>,
) -> (String, String) {
    let last = std::sync::Mutex::new(None);
    wait_for(
        &format!("Migrated {status} ({reason}) after {after}"),
        Duration::from_secs(180),
        || async {
            let s = api.get(name).await.ok()?.status?;
            let c = geodb::api::find_condition(&s.conditions, "Migrated")?.clone();
            *last.lock().unwrap() = Some((c.clone(), s.migrations.clone()));
            let job = s.migrations?.job;
            (c.status == status && c.reason == reason && Some(job.as_str()) != not_job)
                .then_some((c.message, job))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; last seen: {:?}", last.lock().unwrap()))
}

/// The sample schema's indexes have their access methods, and `locations.geom` its type
/// and SRID.
async fn assert_sample_schema(rw: &tokio_postgres::Client) {
    let methods: Vec<(String, String)> = rw
        .query(
            "SELECT c.relname::text, am.amname::text FROM pg_index i \
               JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam \
              WHERE c.relname IN ('locations_geom_idx', 'locations_search_idx', \
                    'locations_category_idx', 'locations_status_idx', 'locations_created_at_idx', \
                    'images_location_id_idx', 'moderation_logs_location_id_idx') \
              ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expect = [
        ("images_location_id_idx", "btree"),
        ("locations_category_idx", "btree"),
        ("locations_created_at_idx", "btree"),
        ("locations_geom_idx", "gist"),
        ("locations_search_idx", "gin"),
        ("locations_status_idx", "btree"),
        ("moderation_logs_location_id_idx", "btree"),
    ]
    .map(|(a, b)| (a.to_owned(), b.to_owned()));
    assert_eq!(methods, expect);
    let geometry = rw
        .query_one(
            "SELECT type, srid FROM geometry_columns WHERE f_table_name = 'locations' AND f_geometry_column = 'geom'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(geometry.get::<_, String>(0), "POINT");
    assert_eq!(geometry.get::<_, i32>(1), 4326);
}

async fn put_files(config_maps: &Api<ConfigMap>, files: BTreeMap<String, String>) {
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "geo-schema"}, "data": files}))
    .unwrap();
    config_maps
        .patch(
            "geo-schema",
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(&cm),
        )
        .await
        .unwrap();
}

pub async fn scenario_migrations(client: &Client, ns: &str) {
    let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), ns);
    let files = sample_files();
    assert!(files.len() >= 5, "{files:?}");
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "geo-schema"}, "data": files.clone()}))
            .unwrap(),
        )
        .await
        .unwrap();
    let spec = serde_json::json!({"spec": {"migrations": {"configMaps": ["geo-schema"]}}});
    api.patch("geo", &PatchParams::default(), &Patch::Merge(&spec))
        .await
        .unwrap();
    let (message, first) = migrated(
        (&api, "geo"),
        ("True", "MigrationsApplied"),
        "the first run",
        None,
    )
    .await;
    assert!(
        message.contains("applied 1, 2, 3, 4, 5 at version 5"),
        "{message}"
    );

    let rw = connect(&connection_for(client, ns, "geo-app-rw", "geo-rw").await).await;
    assert_sample_schema(&rw).await;

    // The same files again (another run of the Job): nothing to apply.
    let again = serde_json::json!({"spec": {"migrations": {"deadlineSeconds": 900}}});
    api.patch("geo", &PatchParams::default(), &Patch::Merge(&again))
        .await
        .unwrap();
    let (message, second) = migrated(
        (&api, "geo"),
        ("True", "MigrationsApplied"),
        "a run with nothing new",
        Some(&first),
    )
    .await;
    assert!(
        message.contains("schema up to date at version 5"),
        "{message}"
    );

    // A broken file: its first statement would make a table; the whole file rolls back.
    let mut broken = files.clone();
    broken.insert(
        "V6__broken.sql".into(),
        "CREATE TABLE half_applied (id int);\nCREATE TABLEE nonsense (id int);\n".into(),
    );
    put_files(&config_maps, broken).await;
    let (message, third) = migrated(
        (&api, "geo"),
        ("False", "MigrationFailed"),
        "a broken file",
        Some(&second),
    )
    .await;
    assert!(message.contains("V6__broken.sql"), "{message}");
    let half: Option<String> = rw
        .query_one("SELECT to_regclass('half_applied')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(half, None, "the failed file left a table behind");
    let highest: String = rw
        .query_one("SELECT max(version) FROM geodb_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(highest, "5");
    // Fixed: the next run applies it.
    let mut fixed = files;
    fixed.insert(
        "V6__broken.sql".into(),
        "CREATE TABLE half_applied (id int);\n".into(),
    );
    put_files(&config_maps, fixed).await;
    let (message, _) = migrated(
        (&api, "geo"),
        ("True", "MigrationsApplied"),
        "the fixed file",
        Some(&third),
    )
    .await;
    assert!(message.contains("applied 6 at version 6"), "{message}");
}

/// The sample Alembic project's image, as `images/build.sh alembic` builds it.
const ALEMBIC_IMAGE: &str = "docker.io/geodb/alembic-sample:dev";

/// Image mode on a GeoDatabase of its own (`alembic`, one instance): the sample Alembic
/// project applies the sample schema; the same image again changes nothing; a command
/// that fails (a revision that does not exist) is reported with Alembic's own error.
pub async fn scenario_migrations_image(client: &Client, ns: &str) {
    let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    let db: GeoDatabase = serde_json::from_value(serde_json::json!({
        "apiVersion": "geodb.io/v1alpha1", "kind": "GeoDatabase",
        "metadata": {"name": "alembic"},
        "spec": {"instances": 1, "storage": {"size": "1Gi"}, "pooler": {"enabled": false},
            "migrations": {"image": {"image": ALEMBIC_IMAGE}}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &db).await.unwrap();
    let (message, first) = migrated(
        (&api, "alembic"),
        ("True", "MigrationsApplied"),
        "the first Alembic run",
        None,
    )
    .await;
    eprintln!("alembic: {message}");
    let rw = connect(&connection_for(client, ns, "alembic-app-rw", "alembic-rw").await).await;
    assert_sample_schema(&rw).await;
    let head = || async {
        rw.query("SELECT version_num FROM alembic_version", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    assert_eq!(head().await, ["0001"]);

    // Another run of the same project: Alembic finds nothing to do.
    let again = serde_json::json!({"spec": {"migrations": {"deadlineSeconds": 900}}});
    api.patch("alembic", &PatchParams::default(), &Patch::Merge(&again))
        .await
        .unwrap();
    let (_, second) = migrated(
        (&api, "alembic"),
        ("True", "MigrationsApplied"),
        "a second Alembic run",
        Some(&first),
    )
    .await;
    assert_eq!(head().await, ["0001"]);
    assert_sample_schema(&rw).await;

    // A command that fails: the condition carries the end of its log.
    let broken = serde_json::json!({"spec": {"migrations": {"image": {"image": ALEMBIC_IMAGE,
        "command": ["python3", "-m", "alembic", "upgrade", "0099"]}}}});
    api.patch("alembic", &PatchParams::default(), &Patch::Merge(&broken))
        .await
        .unwrap();
    let (message, _) = migrated(
        (&api, "alembic"),
        ("False", "MigrationFailed"),
        "an unknown revision",
        Some(&second),
    )
    .await;
    assert!(message.contains("0099"), "{message}");
    assert_eq!(head().await, ["0001"], "a failed run changed the schema");
    api.delete("alembic", &Default::default()).await.unwrap();
}

/// `spec.seed` on the migrated `geo`: one Job loads the demo rows through the primary,
/// the status and an Event say how many; the same settings are not loaded twice.
pub async fn scenario_seed(client: &Client, ns: &str) {
    let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    let rw = connect(&connection_for(client, ns, "geo-app-rw", "geo-rw").await).await;
    let count = || async {
        rw.query_one("SELECT count(*) FROM locations", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let before = count().await;
    let seed = serde_json::json!({"spec": {"seed": {"locations": 3000, "randomSeed": 42}}});
    api.patch("geo", &PatchParams::default(), &Patch::Merge(&seed))
        .await
        .unwrap();
    let last = std::sync::Mutex::new(None);
    let run = wait_for(
        "the seed Job finished",
        Duration::from_secs(180),
        || async {
            let s = api.get("geo").await.ok()?.status?.seed?;
            *last.lock().unwrap() = Some(s.clone());
            (s.outcome != geodb::api::MigrationOutcome::Running).then_some(s)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; last seen: {:?}", last.lock().unwrap()));
    assert_eq!(
        run.outcome,
        geodb::api::MigrationOutcome::Succeeded,
        "{run:?}"
    );
    assert_eq!(run.locations, Some(3000), "{run:?}");
    assert_eq!(count().await, before + 3000);
    let outside: i64 = rw
        .query_one(
            "SELECT count(*) FROM locations WHERE NOT (\
               ST_Intersects(geom, ST_MakeEnvelope($1, $2, $3, $4, 4326)) OR \
               ST_Intersects(geom, ST_MakeEnvelope($5, $6, $7, $8, 4326)))",
            &geodb::jobs::seed::CITIES
                .iter()
                .flat_map(|c| [c.lon.0, c.lat.0, c.lon.1, c.lat.1])
                .collect::<Vec<f64>>()
                .iter()
                .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(outside, 0, "seeded locations outside both cities");
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), ns);
    let notes: Vec<String> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("SeedSucceeded"))
        .filter_map(|e| e.message)
        .collect();
    assert!(
        notes.iter().any(|n| n.contains("loaded 3000 locations")),
        "{notes:?}"
    );
    // Another migration run (a change elsewhere in the spec) loads nothing more.
    let last_run = api
        .get("geo")
        .await
        .unwrap()
        .status
        .unwrap()
        .migrations
        .unwrap()
        .job;
    let other = serde_json::json!({"spec": {"migrations": {"deadlineSeconds": 1200}}});
    api.patch("geo", &PatchParams::default(), &Patch::Merge(&other))
        .await
        .unwrap();
    migrated(
        (&api, "geo"),
        ("True", "MigrationsApplied"),
        "a re-run beside the seed",
        Some(&last_run),
    )
    .await;
    assert_eq!(count().await, before + 3000, "the same seed loaded twice");
    let seed_jobs = Api::<k8s_openapi::api::batch::v1::Job>::namespaced(client.clone(), ns)
        .list(&kube::api::ListParams::default().labels("app.kubernetes.io/component=seed"))
        .await
        .unwrap()
        .items
        .len();
    assert_eq!(seed_jobs, 1);
}
