//! A pooler configuration change reaches the running PgBouncers by reload: the clients
//! connected through them stay connected and the pods are not replaced.

use std::time::Duration;

use geodb_e2e::conn::{connect, connection_for};
use geodb_e2e::kube_util::wait_for;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{LogParams, Patch, PatchParams};
use kube::{Api, Client};

use crate::tls::pooler_pods;

/// The response of `<method> http://ip:8010<path>` to a pooler pod's supervisor, with
/// `authorization` as its header.
async fn request(
    ip: &str,
    method: &str,
    path: &str,
    authorization: Option<&str>,
) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect((ip, 8010)).await?;
    let header = authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    let request =
        format!("{method} {path} HTTP/1.0\r\nHost: {ip}\r\n{header}Content-Length: 0\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

/// `GET http://ip:8010/metrics` of a pooler pod.
async fn scrape(ip: &str) -> std::io::Result<String> {
    request(ip, "GET", "/metrics", None).await
}

/// The status code of `POST http://ip:8010<path>`.
async fn post_status(ip: &str, path: &str, authorization: Option<&str>) -> String {
    let response = request(ip, "POST", path, authorization).await.unwrap();
    response
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

/// The IPs of the pods that `selector` selects.
async fn pod_ips(client: &Client, ns: &str, selector: &str) -> Vec<String> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&kube::api::ListParams::default().labels(selector))
        .await
        .unwrap()
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect()
}

/// Without the operator's token, the control endpoint refuses to pause or repoint the
/// pooler, and the held sessions still run.
async fn control_needs_the_token(client: &Client, ns: &str, held: &[tokio_postgres::Client]) {
    let ips = pod_ips(
        client,
        ns,
        "geodb.io/cluster=geo,app.kubernetes.io/component in (pooler,pooler-ro)",
    )
    .await;
    let forged = format!(
        "Bearer {}",
        geodb::pooler::control::token("not-the-password")
    );
    for ip in ips {
        for authorization in [None, Some("Bearer "), Some(forged.as_str())] {
            for path in ["/pause", "/reconnect", "/reconnect?primary=geo-2.x.svc"] {
                let status = post_status(&ip, path, authorization).await;
                assert_eq!(status, "401", "POST {path} on {ip} with {authorization:?}");
            }
        }
    }
    for (i, session) in held.iter().enumerate() {
        let answer =
            tokio::time::timeout(Duration::from_secs(5), session.simple_query("SELECT 1")).await;
        assert!(
            matches!(answer, Ok(Ok(_))),
            "client {i} after refused control requests: {answer:?}"
        );
    }
}

/// The read-write pooler's metrics count at least `clients` client connections of the
/// application database, and say PgBouncer is up.
async fn clients_in_metrics(client: &Client, ns: &str, clients: usize) {
    let ips = pod_ips(
        client,
        ns,
        "geodb.io/cluster=geo,app.kubernetes.io/component=pooler",
    )
    .await;
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
    for _ in 0..200 {
        let session = connect(&pooler).await;
        session.simple_query("SELECT 1").await.unwrap();
        held.push(session);
    }
    let pods = pooler_pods(client, ns).await;
    clients_in_metrics(client, ns, held.len()).await;
    control_needs_the_token(client, ns, &held).await;
    let mut before = Vec::new();
    for (pod, _, _) in &pods {
        before.push(reloads(client, ns, pod).await);
    }

    let change = serde_json::json!({"spec": {"pooler": {"defaultPoolSize": 10, "maxClientConn": 2000,
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
    for (pod, _, _) in &pods {
        let config = show_config(ns, pod);
        for (key, value) in [
            ("default_pool_size", "10"),
            ("max_client_conn", "2000"),
            ("query_timeout", "300"),
        ] {
            assert!(
                config
                    .lines()
                    .any(|l| l.starts_with(&format!("{key}|{value}|"))),
                "{pod}: SHOW CONFIG has no {key} = {value}:\n{config}"
            );
        }
    }
}

/// `SHOW CONFIG` on the console of PgBouncer in `pod` (as the pod's user, over its socket).
fn show_config(ns: &str, pod: &str) -> String {
    let out = std::process::Command::new("kubectl")
        .args(["exec", "-n", ns, pod, "-c", "pgbouncer", "--"])
        .args([
            "psql",
            "-h",
            "/var/run/pgbouncer",
            "-p",
            "6432",
            "-U",
            "postgres",
        ])
        .args(["-d", "pgbouncer", "-Atc", "SHOW CONFIG"])
        .output()
        .expect("running kubectl exec");
    assert!(
        out.status.success(),
        "SHOW CONFIG in {pod}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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

/// pgbench with `clients` clients, each running `SELECT 1` `per_client` times, against
/// `conn` (TLS required, SCRAM): whether every client finished, and its output.
fn pgbench_select(conn: &geodb_e2e::conn::Conn, clients: u32, per_client: u32) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("geodb-e2e-pgbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("select.sql");
    std::fs::write(&script, "SELECT 1;\n").unwrap();
    let conninfo = format!(
        "host={} port={} user={} dbname={} sslmode=require connect_timeout=30",
        conn.host, conn.port, conn.user, conn.dbname
    );
    // As many descriptors as clients, and more.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 8192 && exec pgbench -n -f {} -c {clients} -j 2 -t {per_client} '{conninfo}'",
            script.display()
        ))
        .env("PGPASSWORD", &conn.password)
        .output()
        .expect("running pgbench");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let done = format!(
        "number of transactions actually processed: {0}/{0}",
        clients * per_client
    );
    (out.status.success() && text.contains(&done), text)
}

/// 1,000 clients at once complete through the pooler without one error, while the same
/// load straight at PostgreSQL (max_connections 100) is refused.
pub async fn scenario_pooler_load(client: &Client, ns: &str) {
    let pooler = connection_for(client, ns, "geo-app-pooler", "geo-pooler").await;
    let direct = connection_for(client, ns, "geo-app-rw", "geo-rw").await;
    let admin = connect(&direct).await;
    let max: String = admin
        .query_one("SHOW max_connections", &[])
        .await
        .unwrap()
        .get(0);
    assert!(max.parse::<u32>().unwrap() <= 100, "max_connections {max}");
    drop(admin);
    let (pooled_ok, pooled) = tokio::task::spawn_blocking(move || pgbench_select(&pooler, 1000, 5))
        .await
        .unwrap();
    assert!(
        pooled_ok,
        "1000 clients through the pooler failed:\n{pooled}"
    );
    assert!(!pooled.contains("aborted"), "{pooled}");
    let (direct_ok, straight) =
        tokio::task::spawn_blocking(move || pgbench_select(&direct, 1000, 5))
            .await
            .unwrap();
    assert!(
        !direct_ok,
        "1000 clients straight at PostgreSQL did not fail:\n{straight}"
    );
    assert!(
        straight.contains("too many clients") || straight.contains("connection slots"),
        "straight at PostgreSQL failed otherwise than on max_connections:\n{straight}"
    );
    eprintln!("1000 clients: through the pooler all done; straight at PostgreSQL refused");
}

/// Deleting the pooler's pod costs its clients a reconnect, no refused statement: the
/// stop lets transactions finish (PgBouncer's safe shutdown) and the Deployment replaces it.
pub async fn scenario_pooler_pod_deleted(client: &Client, ns: &str) {
    let endpoint = geodb_e2e::drill::Endpoint::of(client, ns, "geo-app-pooler", "geo-pooler")
        .await
        .unwrap();
    let direct = connection_for(client, ns, "geo-app-rw", "geo-rw").await;
    connect(&direct)
        .await
        .batch_execute("CREATE TABLE IF NOT EXISTS pooler_drill (id bigint PRIMARY KEY)")
        .await
        .unwrap();
    let writer =
        geodb_e2e::drill::Writer::start(endpoint, "pooler_drill", 1, Duration::from_millis(20));
    wait_for(
        "writes through the pooler",
        Duration::from_secs(60),
        || async { (writer.acks().len() >= 20).then_some(()) },
    )
    .await
    .unwrap();
    let pods = pooler_pods(client, ns).await;
    let (victim, _, _) = pods
        .iter()
        .find(|(name, _, _)| name.starts_with("geo-pooler-") && !name.starts_with("geo-pooler-ro-"))
        .cloned()
        .expect("a read-write pooler pod");
    let deleted_at = std::time::Instant::now();
    geodb_e2e::drill::delete_pod(client, ns, &victim)
        .await
        .unwrap();
    wait_for(
        "writes through the pooler after its pod was deleted",
        Duration::from_secs(120),
        || async {
            (writer.acks().iter().filter(|a| a.sent > deleted_at).count() >= 20).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; errors: {:?}", writer.errors_after(deleted_at)));
    let errors = writer.errors_after(deleted_at);
    let acks = writer.stop().await;
    // A server going away says so with a connection-class SQLSTATE (08..., 57P01..03),
    // which drivers and pools take as "reconnect"; anything else was refused.
    let refused: Vec<_> = errors
        .iter()
        .filter(|(_, e)| {
            e.strip_prefix("db: ")
                .is_some_and(|rest| !(rest.starts_with("08") || rest.starts_with("57P0")))
        })
        .collect();
    assert!(
        refused.is_empty(),
        "statements refused after the pooler pod was deleted (only reconnects expected): {refused:?}"
    );
    // Every acknowledged write is there.
    let rows: i64 = connect(&direct)
        .await
        .query_one(
            "SELECT count(*) FROM pooler_drill WHERE id = ANY($1)",
            &[&acks.iter().map(|a| a.id).collect::<Vec<_>>()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows as usize, acks.len(), "acknowledged writes missing");
    eprintln!(
        "pooler pod deleted: {} reconnect errors, {} writes acknowledged, none lost",
        errors.len(),
        acks.len()
    );
}

/// Protocol-level prepared statements (named, as tokio-postgres, JDBC and asyncpg make
/// them) work through the transaction pooler: more clients than server connections, each
/// preparing and running its statements, which therefore hop between server connections.
pub async fn scenario_pooler_prepared(client: &Client, ns: &str) {
    let pooler = connection_for(client, ns, "geo-app-pooler", "geo-pooler").await;
    let mut sessions = Vec::new();
    for _ in 0..30 {
        sessions.push(connect(&pooler).await);
    }
    let runs = sessions.iter().enumerate().map(|(i, session)| async move {
        let add = session.prepare("SELECT $1::int4 + 1").await?;
        let name = session
            .prepare("SELECT $1::text || '-' || pg_backend_pid()")
            .await?;
        for round in 0..10i32 {
            let sum: i32 = session.query_one(&add, &[&round]).await?.get(0);
            assert_eq!(sum, round + 1, "client {i}");
            let tag: String = session.query_one(&name, &[&format!("c{i}")]).await?.get(0);
            assert!(tag.starts_with(&format!("c{i}-")), "client {i}: {tag}");
        }
        Ok::<_, tokio_postgres::Error>(())
    });
    let results = futures::future::join_all(runs).await;
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .map(|e| {
            e.as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_else(|| e.to_string())
        })
        .collect();
    assert!(
        failed.is_empty(),
        "prepared statements failed through the transaction pooler: {failed:?}"
    );
}
