//! TLS everywhere: every network session to the instances and the poolers is encrypted
//! and verified, plaintext is refused, and a renewed server certificate is served by
//! every instance (reloaded, sessions kept) and by the poolers (reloaded, clients
//! kept). A certificate the user brings is served instead.

use std::time::Duration;

use geodb::names::ANNOTATION_TLS_NOT_AFTER;
use geodb_e2e::conn::{connect, connection_for};
use geodb_e2e::drill::{
    geodatabase, pod_ip, primary_of, superuser, superuser_password, wait_healthy,
};
use geodb_e2e::kube_util::wait_for;
use geodb_e2e::tls::{plaintext_refusal, served_certificate};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};

const RENEWAL_TIMEOUT: Duration = Duration::from_secs(240);

/// Name, uid and container restarts of each pooler pod of `geo` (both poolers).
pub async fn pooler_pods(client: &Client, ns: &str) -> Vec<(String, String, i32)> {
    geodb_e2e::kube_util::incarnations(
        client,
        ns,
        "geodb.io/cluster=geo,app.kubernetes.io/component in (pooler,pooler-ro)",
    )
    .await
}

/// The pod IPs of the instances of `geo`.
async fn instance_ips(client: &Client, ns: &str) -> Vec<(String, String)> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(
            &ListParams::default()
                .labels("geodb.io/cluster=geo,app.kubernetes.io/component=database"),
        )
        .await
        .unwrap()
        .into_iter()
        .filter_map(|p| Some((p.name_any(), p.status?.pod_ip?)))
        .collect()
}

pub async fn scenario_tls(client: &Client, ns: &str) {
    let login = superuser_password(client, ns, "geo").await.unwrap();
    let db = geodatabase(client, ns, "geo").await.unwrap();
    let primary = primary_of(&db).unwrap();
    let primary_ip = pod_ip(client, ns, &format!("{primary}-0")).await.unwrap();
    let admin = superuser(&primary_ip, &login).await.unwrap();

    // Sessions through the pooler make it hold a server connection to the primary; they
    // stay open across the renewal below.
    let pooler = connection_for(client, ns, "geo-app-pooler", "geo-pooler").await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let pooled = connect(&pooler).await;
        pooled.simple_query("SELECT 1").await.unwrap();
        held.push(pooled);
    }
    let poolers = pooler_pods(client, ns).await;
    let rw = connection_for(client, ns, "geo-app-rw", "geo-rw").await;

    // Every network session on the primary is encrypted: the replicas' WAL senders, the
    // pooler's server connection, the operator's and ours.
    let sessions: Vec<(String, String, bool, Option<String>)> = admin
        .query(
            "SELECT a.backend_type, coalesce(a.usename::text, ''), s.ssl, s.version
               FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
              WHERE a.client_addr IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let senders = sessions.iter().filter(|s| s.0 == "walsender").count();
    assert_eq!(senders, 2, "one WAL sender per replica: {sessions:?}");
    assert!(
        sessions.iter().any(|s| s.1 == rw.user),
        "the pooler's server connection as {}: {sessions:?}",
        rw.user
    );
    for (kind, user, ssl, version) in &sessions {
        assert!(ssl, "{kind} of {user} is not encrypted: {sessions:?}");
        assert!(
            matches!(version.as_deref(), Some("TLSv1.2" | "TLSv1.3")),
            "{kind} of {user}: {version:?}"
        );
    }

    // Plaintext is refused by PostgreSQL (no pg_hba entry without TLS) and PgBouncer.
    let refused = plaintext_refusal(&rw.host, rw.port, &rw.user, &rw.password, &rw.dbname).await;
    assert!(
        refused
            .as_deref()
            .is_some_and(|m| m.contains("no encryption")),
        "plaintext login to the read-write Service: {refused:?}"
    );
    let refused = plaintext_refusal(
        &pooler.host,
        pooler.port,
        &pooler.user,
        &pooler.password,
        &pooler.dbname,
    )
    .await;
    assert!(
        refused.as_deref().is_some_and(|m| m.contains("SSL")),
        "plaintext login to the pooler: {refused:?}"
    );

    // The certificate holds the Service's name, not another, and chains to this cluster's
    // CA only.
    let before = served_certificate(&rw.host, rw.port, &rw.server_name, &rw.ca_pem)
        .await
        .unwrap();
    let wrong_name =
        served_certificate(&rw.host, rw.port, "geo-rw.elsewhere.svc", &rw.ca_pem).await;
    assert!(
        wrong_name.is_err(),
        "a certificate for a name it does not hold"
    );
    let foreign = geodb::certs::new_ca("other", ns, now()).unwrap();
    let untrusted = served_certificate(&rw.host, rw.port, &rw.server_name, &foreign.cert_pem).await;
    assert!(untrusted.is_err(), "trusted by a foreign CA");
    let pooler_before = served_certificate(
        &pooler.host,
        pooler.port,
        &pooler.server_name,
        &pooler.ca_pem,
    )
    .await
    .unwrap();
    assert_eq!(
        pooler_before, before,
        "the pooler serves the cluster's certificate"
    );

    renewal(client, ns, &before, &rw.server_name, &rw.ca_pem).await;

    // Sessions opened before the renewal go on, the pooler's clients included: PgBouncer
    // was reloaded, not restarted.
    let still: i32 = admin.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(still, 1);
    let renewed = wait_for(
        "the poolers serve the renewed certificate",
        RENEWAL_TIMEOUT,
        || async {
            let served = served_certificate(
                &pooler.host,
                pooler.port,
                &pooler.server_name,
                &pooler.ca_pem,
            )
            .await
            .ok()?;
            (served != before).then_some(served)
        },
    )
    .await
    .unwrap();
    let instance = served_certificate(&rw.host, rw.port, &rw.server_name, &rw.ca_pem)
        .await
        .unwrap();
    assert_eq!(
        renewed, instance,
        "pooler and instances serve the same certificate"
    );
    for (i, pooled) in held.iter().enumerate() {
        let answer = pooled.simple_query("SELECT 1").await;
        assert!(answer.is_ok(), "pooler client {i} dropped: {answer:?}");
    }
    assert_eq!(
        pooler_pods(client, ns).await,
        poolers,
        "the pooler pods were replaced or restarted"
    );
    wait_healthy(client, ns, "geo", 3, Duration::from_secs(300))
        .await
        .unwrap();
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Mark the server certificate due and wait until every instance serves a new one.
async fn renewal(client: &Client, ns: &str, before: &[u8], name: &str, ca_pem: &str) {
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns);
    let due = serde_json::json!({"metadata": {"annotations": {ANNOTATION_TLS_NOT_AFTER: "0"}}});
    secrets
        .patch(
            "geo-server-tls",
            &PatchParams::default(),
            &Patch::Merge(&due),
        )
        .await
        .unwrap();
    let seen = std::sync::Mutex::new(Vec::<String>::new());
    let renewed = wait_for(
        "every instance serves a renewed certificate",
        RENEWAL_TIMEOUT,
        || async {
            let ips = instance_ips(client, ns).await;
            let mut served = Vec::new();
            for (pod, ip) in &ips {
                served.push((
                    pod.clone(),
                    served_certificate(ip, 5432, name, ca_pem).await,
                ));
            }
            *seen.lock().unwrap() = served
                .iter()
                .map(|(pod, c)| match c {
                    Ok(c) if c == before => format!("{pod}: old"),
                    Ok(_) => format!("{pod}: new"),
                    Err(e) => format!("{pod}: {e:#}"),
                })
                .collect();
            let certs: Vec<&Vec<u8>> = served.iter().filter_map(|(_, c)| c.as_ref().ok()).collect();
            let all_new = certs.len() == 3
                && certs
                    .iter()
                    .all(|c| c.as_slice() != before && *c == certs[0]);
            all_new.then_some(())
        },
    )
    .await;
    renewed.unwrap_or_else(|e| panic!("{e}; served: {:?}", seen.lock().unwrap()));
}

/// A certificate the user brings (as cert-manager would write it, from a CA of their
/// own): PostgreSQL and PgBouncer serve it, and clients trusting only that CA (the
/// connection Secrets' `ca.crt`) connect with `verify-full`.
pub async fn scenario_provided_tls(client: &Client, ns: &str) {
    let now = now();
    let ca = geodb::certs::new_ca("team-ca", ns, now).unwrap();
    let hosts = ["own-rw", "own-ro", "own-pooler", "own-pooler-ro", "own-1"].map(String::from);
    let names = geodb::certs::server_names(&hosts, ns);
    let server = geodb::certs::issue_server(&ca, "team-ca", ns, &names, now).unwrap();
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "own-cert"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": server.cert_pem, "tls.key": server.key_pem, "ca.crt": ca.cert_pem}
    }))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let text = std::fs::read_to_string(
        geodb_e2e::kube_util::repo_root().join("config/samples/geodatabase.yaml"),
    )
    .unwrap();
    let mut db: geodb::api::GeoDatabase = serde_yaml::from_str(&text).unwrap();
    db.metadata.name = Some("own".into());
    db.spec.instances = 1;
    db.spec.tls = Some(geodb::api::TlsSpec {
        server_secret: "own-cert".into(),
    });
    let dbs = Api::<geodb::api::GeoDatabase>::namespaced(client.clone(), ns);
    dbs.create(&PostParams::default(), &db).await.unwrap();
    wait_healthy(client, ns, "own", 1, Duration::from_secs(300))
        .await
        .unwrap();

    for (secret, service) in [("own-app-rw", "own-rw"), ("own-app-pooler", "own-pooler")] {
        let conn = connection_for(client, ns, secret, service).await;
        assert_eq!(conn.ca_pem, ca.cert_pem, "{secret} hands out the user's CA");
        // `connect` verifies the chain against that CA only, and the Service's name.
        let session = connect(&conn).await;
        let answer = session.simple_query("SELECT 1").await;
        assert!(answer.is_ok(), "through {service}: {answer:?}");
        let served = served_certificate(&conn.host, conn.port, &conn.server_name, &ca.cert_pem)
            .await
            .unwrap();
        let issued = pem_der(&server.cert_pem);
        assert_eq!(served, issued, "{service} serves the user's certificate");
    }
    dbs.delete("own", &Default::default()).await.unwrap();
}

/// The DER of the first certificate in `pem`.
fn pem_der(pem: &str) -> Vec<u8> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    tokio_rustls::rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}
