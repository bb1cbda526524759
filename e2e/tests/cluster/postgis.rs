//! The extensions of `spec.postgis`: kept in the application database, and the
//! `PostGISReady` condition comes from a real query; an extension the image lacks is named
//! in the condition and an Event, the others are still created.

use std::time::Duration;

use geodb::api::GeoDatabase;
use geodb_e2e::conn::{connect, connection_for};
use geodb_e2e::kube_util::wait_for;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

/// `PostGISReady` of `geo`: status, reason, message.
async fn postgis_ready(api: &Api<GeoDatabase>) -> Option<(String, String, String)> {
    let status = api.get("geo").await.ok()?.status?;
    let c = geodb::api::find_condition(&status.conditions, "PostGISReady")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn wait_condition(api: &Api<GeoDatabase>, status: &str, reason: &str) -> String {
    let last = std::sync::Mutex::new(None);
    wait_for(
        &format!("PostGISReady {status} ({reason})"),
        Duration::from_secs(120),
        || async {
            let seen = postgis_ready(api).await;
            *last.lock().unwrap() = seen.clone();
            let (s, r, m) = seen?;
            (s == status && r == reason).then_some(m)
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
