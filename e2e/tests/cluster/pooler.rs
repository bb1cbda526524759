//! A pooler configuration change reaches the running PgBouncers by reload: the clients
//! connected through them stay connected and the pods are not replaced.

use std::time::Duration;

use geodb_e2e::conn::{connect, connection_for};
use geodb_e2e::kube_util::wait_for;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{LogParams, Patch, PatchParams};
use kube::{Api, Client};

use crate::tls::pooler_pods;

/// `GET http://ip:8010/metrics` of a pooler pod.
async fn scrape(ip: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect((ip, 8010)).await?;
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {ip}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

/// The read-write pooler's metrics count at least `clients` client connections of the
/// application database, and say PgBouncer is up.
async fn clients_in_metrics(client: &Client, ns: &str, clients: usize) {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(
            &kube::api::ListParams::default()
                .labels("geodb.io/cluster=geo,app.kubernetes.io/component=pooler"),
        )
        .await
        .unwrap();
    let ips: Vec<String> = pods
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    let mut total = 0.0;
    let mut seen = String::new();
    for ip in &ips {
        let text = scrape(ip)
            .await
            .unwrap_or_else(|e| panic!("scraping {ip}:8010: {e}"));
        assert!(text.contains("\npgbouncer_up 1\n"), "{text}");
        total += text
            .lines()
            .filter(|l| l.starts_with("pgbouncer_pool_client_connections{database=\"app\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        seen.push_str(&text);
    }
    assert!(
        total >= clients as f64,
        "{total} clients in the metrics, {clients} held:\n{seen}"
    );
}

/// The log of PgBouncer (and `geodb pooler`) in `pod`.
async fn log_of(client: &Client, ns: &str, pod: &str) -> String {
    let params = LogParams {
        container: Some("pgbouncer".into()),
        ..LogParams::default()
    };
    Api::<Pod>::namespaced(client.clone(), ns)
        .logs(pod, &params)
        .await
        .unwrap_or_default()
}

/// How many times PgBouncer in `pod` re-read its configuration, from its log.
async fn reloads(client: &Client, ns: &str, pod: &str) -> usize {
    log_of(client, ns, pod)
        .await
        .matches("re-reading config")
        .count()
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
    clients_in_metrics(client, ns, held.len()).await;
    let mut before = Vec::new();
    for (pod, _, _) in &pods {
        before.push(reloads(client, ns, pod).await);
    }

    let change = serde_json::json!({"spec": {"pooler": {"defaultPoolSize": 10,
        "serverLifetime": 1800, "settings": {"query_timeout": "300", "tcp_keepalive": "1"}}}});
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

/// A login through the pooler as `user`: its error's message when refused.
async fn pooled_login(
    pooler: &geodb_e2e::conn::Conn,
    user: &str,
    password: &str,
) -> Result<String, String> {
    pooled_login_to(pooler, &pooler.dbname, user, password).await
}

async fn pooled_login_to(
    pooler: &geodb_e2e::conn::Conn,
    dbname: &str,
    user: &str,
    password: &str,
) -> Result<String, String> {
    let mut config = tokio_postgres::Config::new();
    geodb_e2e::conn::dial(&mut config, &pooler.host, &pooler.server_name);
    config
        .port(pooler.port)
        .user(user)
        .password(password)
        .dbname(dbname)
        .connect_timeout(Duration::from_secs(5));
    let session = geodb_e2e::conn::open_verified(&config, &pooler.ca_pem)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let messages = session
        .simple_query("SELECT current_user")
        .await
        .map_err(|e| {
            e.as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_else(|| e.to_string())
        })?;
    messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .ok_or_else(|| "no row".to_owned())
}

/// Any login role made after bootstrap logs in through the pooler (its verifier looked
/// up, no password given to PgBouncer); the superuser and the replication role cannot.
pub async fn scenario_pooler_roles(client: &Client, ns: &str) {
    let login = geodb_e2e::drill::superuser_password(client, ns, "geo")
        .await
        .unwrap();
    let db = geodb_e2e::drill::geodatabase(client, ns, "geo")
        .await
        .unwrap();
    let primary = geodb_e2e::drill::primary_of(&db).unwrap();
    let ip = geodb_e2e::drill::pod_ip(client, ns, &format!("{primary}-0"))
        .await
        .unwrap();
    let admin = geodb_e2e::drill::superuser(&ip, &login).await.unwrap();
    admin
        .batch_execute("CREATE ROLE late_reader LOGIN PASSWORD 'late-reader-pw-1234'")
        .await
        .unwrap();
    admin
        .batch_execute("CREATE DATABASE late_db TEMPLATE template0 OWNER late_reader")
        .await
        .unwrap();
    let pooler = connection_for(client, ns, "geo-app-pooler", "geo-pooler").await;
    let last = std::sync::Mutex::new(String::new());
    let who = wait_for(
        "a role made after bootstrap logs in through the pooler",
        Duration::from_secs(60),
        || async {
            match pooled_login(&pooler, "late_reader", "late-reader-pw-1234").await {
                Ok(who) => Some(who),
                Err(e) => {
                    *last.lock().unwrap() = e;
                    None
                }
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; last error: {}", last.lock().unwrap()));
    assert_eq!(who, "late_reader");
    let wrong = pooled_login(&pooler, "late_reader", "not-its-password").await;
    assert!(wrong.is_err(), "a wrong password let in: {wrong:?}");
    let superuser = pooled_login(&pooler, "postgres", &login.password).await;
    assert!(
        superuser.is_err(),
        "the superuser logged in through the pooler: {superuser:?}"
    );
    let lookup = pooled_login(&pooler, "geodb_pooler", "anything").await;
    assert!(
        lookup.is_err(),
        "the lookup role logged in through the pooler: {lookup:?}"
    );
    // A database made from template0 (as `pg_restore --create` does) gets the lookup too.
    wait_for(
        "a database made after bootstrap from template0 is reachable through the pooler",
        Duration::from_secs(60),
        || async {
            match pooled_login_to(&pooler, "late_db", "late_reader", "late-reader-pw-1234").await {
                Ok(who) => Some(who),
                Err(e) => {
                    *last.lock().unwrap() = e;
                    None
                }
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; last error: {}", last.lock().unwrap()));
    // Nothing of the lookup travels in a dump (it restores into any server).
    let dumped = admin
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_proc p WHERE p.proname = 'geodb_pooler_lookup' \
               AND p.proacl IS NULL AND p.pronamespace = 'pg_catalog'::regnamespace",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        dumped.get::<_, i64>(0),
        1,
        "the lookup is not a default-privilege pg_catalog function"
    );
}
