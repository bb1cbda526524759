//! A pooler configuration change reaches the running PgBouncers by reload: the clients
//! connected through them stay connected and the pods are not replaced.

use std::time::Duration;

use geodb_e2e::conn::{connect, connection_for};
use geodb_e2e::kube_util::wait_for;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{LogParams, Patch, PatchParams};
use kube::{Api, Client};

use crate::tls::pooler_pods;

/// How many times PgBouncer in `pod` re-read its configuration, from its log.
async fn reloads(client: &Client, ns: &str, pod: &str) -> usize {
    let params = LogParams {
        container: Some("pgbouncer".into()),
        ..LogParams::default()
    };
    Api::<Pod>::namespaced(client.clone(), ns)
        .logs(pod, &params)
        .await
        .map(|log| log.matches("re-reading config").count())
        .unwrap_or_default()
}

pub async fn scenario_pooler_reload(client: &Client, ns: &str) {
    let pooler = connection_for(client, ns, "geo-app-pooler", "geo-pooler").await;
    let mut held = Vec::new();
    for _ in 0..20 {
        let session = connect(&pooler).await;
        session.simple_query("SELECT 1").await.unwrap();
        held.push(session);
    }
    let pods = pooler_pods(client, ns).await;
    let mut before = Vec::new();
    for (pod, _, _) in &pods {
        before.push(reloads(client, ns, pod).await);
    }

    let change = serde_json::json!({"spec": {"pooler": {"defaultPoolSize": 10}}});
    Api::<geodb::api::GeoDatabase>::namespaced(client.clone(), ns)
        .patch("geo", &PatchParams::default(), &Patch::Merge(&change))
        .await
        .unwrap();
    wait_for(
        "every pooler pod reloaded its configuration",
        Duration::from_secs(180),
        || async {
            for ((pod, _, _), count) in pods.iter().zip(&before) {
                if reloads(client, ns, pod).await <= *count {
                    return None;
                }
            }
            Some(())
        },
    )
    .await
    .unwrap();
    for (i, session) in held.iter().enumerate() {
        let answer = session.simple_query("SELECT 1").await;
        assert!(
            answer.is_ok(),
            "client {i} dropped by the reload: {answer:?}"
        );
    }
    assert_eq!(
        pooler_pods(client, ns).await,
        pods,
        "pooler pods replaced or restarted"
    );
}
