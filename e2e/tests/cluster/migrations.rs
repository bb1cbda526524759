//! Built-in migrations: the sample schema applied by a Job from a ConfigMap; a second run
//! is a no-op; a broken file is rolled back, named in the `Migrated` condition and leaves
//! the schema as it was.

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
    api: &Api<GeoDatabase>,
    (status, reason): (&str, &str),
    after: &str,
    not_job: Option<&str>,
) -> (String, String) {
    let last = std::sync::Mutex::new(None);
    wait_for(
        &format!("Migrated {status} ({reason}) after {after}"),
        Duration::from_secs(180),
        || async {
            let s = api.get("geo").await.ok()?.status?;
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
    let (message, first) =
        migrated(&api, ("True", "MigrationsApplied"), "the first run", None).await;
    assert!(
        message.contains("applied 1, 2, 3, 4, 5 at version 5"),
        "{message}"
    );

    let rw = connect(&connection_for(client, ns, "geo-app-rw", "geo-rw").await).await;
    let methods: Vec<(String, String)> = rw
        .query(
            "SELECT c.relname::text, am.amname::text FROM pg_index i \
               JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam \
              WHERE c.relname IN ('locations_geom_idx', 'locations_search_idx', \
                    'locations_category_idx', 'locations_status_idx', 'locations_created_at_idx') \
              ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expect = [
        ("locations_category_idx", "btree"),
        ("locations_created_at_idx", "btree"),
        ("locations_geom_idx", "gist"),
        ("locations_search_idx", "gin"),
        ("locations_status_idx", "btree"),
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

    // The same files again (another run of the Job): nothing to apply.
    let again = serde_json::json!({"spec": {"migrations": {"deadlineSeconds": 900}}});
    api.patch("geo", &PatchParams::default(), &Patch::Merge(&again))
        .await
        .unwrap();
    let (message, second) = migrated(
        &api,
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
        &api,
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
        &api,
        ("True", "MigrationsApplied"),
        "the fixed file",
        Some(&third),
    )
    .await;
    assert!(message.contains("applied 6 at version 6"), "{message}");
}
