//! The extensions of `spec.postgis`: kept in the application database, and the
//! `PostGISReady` condition comes from a real query; an extension the image lacks is named
//! in the condition and an Event, the others are still created; an extension older than
//! the image's is updated and the Event says so.

use std::time::Duration;

use geodb::api::GeoDatabase;
use geodb_e2e::conn::{connect, connection_for};
use geodb_e2e::drill::{pod_ip, primary_of, superuser_password, Endpoint};
use geodb_e2e::kube_util::wait_for;
use k8s_openapi::api::core::v1::Event;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};

/// `PostGISReady` of `geo`: status, reason, message.
async fn postgis_ready(api: &Api<GeoDatabase>) -> Option<(String, String, String)> {
    let status = api.get("geo").await.ok()?.status?;
    let c = geodb::api::find_condition(&status.conditions, "PostGISReady")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn wait_condition(api: &Api<GeoDatabase>, status: &str, reason: &str) -> String {
    wait_condition_saying(api, status, reason, "").await
}

/// As [`wait_condition`], until the message also contains `saying`: a condition that
/// was already at that status may still describe the spec before the last change.
async fn wait_condition_saying(
    api: &Api<GeoDatabase>,
    status: &str,
    reason: &str,
    saying: &str,
) -> String {
    let last = std::sync::Mutex::new(None);
    wait_for(
        &format!("PostGISReady {status} ({reason}) saying {saying:?}"),
        Duration::from_secs(120),
        || async {
            let seen = postgis_ready(api).await;
            *last.lock().unwrap() = seen.clone();
            let (s, r, m) = seen?;
            (s == status && r == reason && m.contains(saying)).then_some(m)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; last seen: {:?}", last.lock().unwrap()))
}

pub async fn scenario_postgis_extensions(client: &Client, ns: &str) {
    let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    let message = wait_condition(&api, "True", "PostGISVerified").await;
    assert!(message.contains("postgis 3."), "{message}");
    assert!(message.contains("POSTGIS="), "{message}");

    let change = serde_json::json!({"spec": {"postgis": {
        "extensions": ["postgis", "postgis_topology", "fuzzystrmatch", "no_such_extension"]}}});
    api.patch("geo", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .unwrap();
    let message = wait_condition(&api, "False", "ExtensionUnavailable").await;
    assert!(
        message.contains("postgis.extensions") && message.contains("no_such_extension"),
        "{message}"
    );
    // The others were created all the same.
    let rw = connect(&connection_for(client, ns, "geo-app-rw", "geo-rw").await).await;
    let installed: Vec<String> = rw
        .query(
            "SELECT extname::text FROM pg_extension WHERE extname IN ('postgis_topology', 'fuzzystrmatch') ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(installed, ["fuzzystrmatch", "postgis_topology"]);
    let status = api.get("geo").await.unwrap().status.unwrap();
    let kept = status.postgis.unwrap();
    assert_eq!(kept.unavailable, ["no_such_extension"]);

    let fixed = serde_json::json!({"spec": {"postgis": {
        "extensions": ["postgis", "postgis_topology", "fuzzystrmatch"]}}});
    api.patch("geo", &PatchParams::default(), &Patch::Merge(&fixed))
        .await
        .unwrap();
    let message = wait_condition(&api, "True", "PostGISVerified").await;
    assert!(message.contains("postgis_topology"), "{message}");
}

/// A superuser session in `geo`'s application database on its primary.
async fn superuser_in_app_db(client: &Client, ns: &str) -> tokio_postgres::Client {
    let db = Api::<GeoDatabase>::namespaced(client.clone(), ns)
        .get("geo")
        .await
        .unwrap();
    let primary = primary_of(&db).expect("geo has a primary");
    let login = superuser_password(client, ns, "geo").await.unwrap();
    Endpoint {
        host: pod_ip(client, ns, &format!("{primary}-0")).await.unwrap(),
        port: 5432,
        user: "postgres".into(),
        password: login.password,
        dbname: db.spec.database.name.clone(),
        server_name: "localhost".into(),
        ca_pem: login.ca_pem,
    }
    .connect(Duration::from_secs(5))
    .await
    .unwrap()
}

/// An extension installed at an older version than the image's (as after an image
/// upgrade) is brought to the image's version at the next check, with an Event that says
/// from which version to which.
pub async fn scenario_extension_update(client: &Client, ns: &str) {
    let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    let sql = superuser_in_app_db(client, ns).await;
    // The oldest version the image can still install, and the one it brings.
    let row = sql
        .query_one(
            "SELECT (SELECT v.version FROM pg_available_extension_versions v \
                      WHERE v.name = e.name AND v.version <> e.default_version \
                      ORDER BY string_to_array(v.version, '.')::int[] LIMIT 1), \
                    e.default_version \
               FROM pg_available_extensions e WHERE e.name = 'pg_stat_statements'",
            &[],
        )
        .await
        .unwrap();
    let (old, image): (Option<String>, String) = (row.get(0), row.get(1));
    let old = old.expect("the image can install an older pg_stat_statements");
    sql.batch_execute(&format!(
        "DROP EXTENSION IF EXISTS pg_stat_statements; \
         CREATE EXTENSION pg_stat_statements VERSION '{old}'"
    ))
    .await
    .unwrap();
    // The next check: a change of the list, as an image change would make one.
    let wanted = serde_json::json!({"spec": {"postgis": {"extensions":
        ["postgis", "postgis_topology", "fuzzystrmatch", "pg_stat_statements"]}}});
    api.patch("geo", &PatchParams::default(), &Patch::Merge(&wanted))
        .await
        .unwrap();
    let installed = || async {
        let row = sql
            .query_one(
                "SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_statements'",
                &[],
            )
            .await
            .ok()?;
        Some(row.get::<_, String>(0))
    };
    let waited = wait_for(
        &format!("pg_stat_statements updated from {old} to {image}"),
        Duration::from_secs(120),
        || async { (installed().await? == image).then_some(()) },
    )
    .await;
    if let Err(e) = waited {
        panic!("{e}; installed: {:?}", installed().await);
    }
    let events = Api::<Event>::namespaced(client.clone(), ns);
    let said = format!("updated pg_stat_statements from {old} to {image}");
    let notes = wait_for(
        "an ExtensionUpdated Event",
        Duration::from_secs(30),
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            let notes: Vec<String> = list
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("ExtensionUpdated"))
                .filter_map(|e| e.message)
                .collect();
            notes.iter().any(|n| n.contains(&said)).then_some(notes)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e} saying {said:?}"));
    eprintln!("extension update: {notes:?}");
    wait_condition_saying(&api, "True", "PostGISVerified", "pg_stat_statements").await;
}
