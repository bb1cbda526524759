//! End-to-end suite against a real cluster (whatever `KUBECONFIG` points at) where the
//! operator and the images are installed (`make e2e` does both on the local cluster).
//! Each scenario runs in a namespace of its own; on failure it prints the namespace's
//! pods, Events and container logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use geodb::api::{GeoDatabase, Phase};
use geodb_e2e::kube_util::{repo_root, wait_for};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use tokio_postgres::NoTls;

const READY_TIMEOUT: Duration = Duration::from_secs(600);

struct Conn {
    host: String,
    port: u16,
    user: String,
    password: String,
    dbname: String,
}

async fn connect(conn: &Conn) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::Config::new()
        .host(&conn.host)
        .port(conn.port)
        .user(&conn.user)
        .password(&conn.password)
        .dbname(&conn.dbname)
        .connect_timeout(Duration::from_secs(5))
        .connect(NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {}:{}: {e}", conn.host, conn.port));
    tokio::spawn(connection);
    client
}

/// Connection details from a connection Secret, with the Service's ClusterIP as host
/// (the test runs on the node, outside cluster DNS).
async fn connection_for(client: &Client, ns: &str, secret: &str, service: &str) -> Conn {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(secret)
        .await
        .unwrap();
    let data = secret.data.unwrap();
    let text = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .get(service)
        .await
        .unwrap();
    Conn {
        host: svc.spec.unwrap().cluster_ip.unwrap(),
        port: text("port").parse().unwrap(),
        user: text("user"),
        password: text("password"),
        dbname: text("dbname"),
    }
}

async fn scenario_postgis_cluster(client: &Client, ns: &str) {
    let text =
        std::fs::read_to_string(repo_root().join("config/samples/geodatabase.yaml")).unwrap();
    let db: GeoDatabase = serde_yaml::from_str(&text).unwrap();
    let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &db).await.unwrap();
    wait_for(
        "GeoDatabase geo Ready with 3 ready instances",
        READY_TIMEOUT,
        || async {
            let db = api.get("geo").await.ok()?;
            let status = db.status?;
            (status.phase == Some(Phase::Ready) && status.ready_instances == 3).then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // Pods run as non-root with the RuntimeDefault seccomp profile.
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("geodb.io/cluster=geo"))
        .await
        .unwrap();
    assert_eq!(
        pods.items.len(),
        5,
        "3 instances, a read-write and a read-only pooler"
    );
    for pod in &pods {
        let sc = pod.spec.as_ref().unwrap().security_context.clone().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true), "{}", pod.name_any());
        assert_ne!(sc.run_as_user, Some(0), "{}", pod.name_any());
        assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    }

    // Through the read-write Service.
    let rw = connect(&connection_for(client, ns, "geo-app-rw", "geo-rw").await).await;
    let version: String = rw
        .query_one("SELECT postgis_full_version()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(version.starts_with("POSTGIS="), "{version}");
    rw.batch_execute(
        "CREATE TABLE places (id int PRIMARY KEY, name text NOT NULL, geom geometry(Point, 4326) NOT NULL);
         INSERT INTO places VALUES
           (1, 'Hoan Kiem Lake', ST_SetSRID(ST_MakePoint(105.8522, 21.0287), 4326)),
           (2, 'Temple of Literature', ST_SetSRID(ST_MakePoint(105.8355, 21.0293), 4326)),
           (3, 'Ben Thanh Market', ST_SetSRID(ST_MakePoint(106.6981, 10.7725), 4326));",
    )
    .await
    .unwrap();
    let rows = rw
        .query("SELECT name FROM places ORDER BY id", &[])
        .await
        .unwrap();
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        names,
        ["Hoan Kiem Lake", "Temple of Literature", "Ben Thanh Market"]
    );
    // Within 2 km of Hoan Kiem Lake (geography distance in metres): the temple, not Saigon.
    let near: Vec<String> = rw
        .query(
            "SELECT name FROM places WHERE ST_DWithin(geom::geography,
               ST_SetSRID(ST_MakePoint(105.8522, 21.0287), 4326)::geography, 2000) ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(near, ["Hoan Kiem Lake", "Temple of Literature"]);
    let column_type: String = rw
        .query_one("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'places'::regclass AND attname = 'geom'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(column_type, "geometry(Point,4326)");

    // Through PgBouncer in transaction mode (simple protocol: no named prepared statements).
    let pooled = connect(&connection_for(client, ns, "geo-app-pooler", "geo-pooler").await).await;
    let messages = pooled
        .simple_query("SELECT count(*) FROM places WHERE ST_DWithin(geom::geography, ST_SetSRID(ST_MakePoint(105.8522, 21.0287), 4326)::geography, 2000)")
        .await
        .unwrap();
    let count = messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(count.as_deref(), Some("2"));

    // The read-only pooler reaches a replica, which has the rows once it replays them.
    let readonly =
        connect(&connection_for(client, ns, "geo-app-pooler-ro", "geo-pooler-ro").await).await;
    let answer = |messages: Vec<tokio_postgres::SimpleQueryMessage>| {
        messages.into_iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
    };
    let in_recovery = answer(
        readonly
            .simple_query("SELECT pg_is_in_recovery()")
            .await
            .unwrap(),
    );
    assert_eq!(
        in_recovery.as_deref(),
        Some("t"),
        "the read-only pooler must reach a replica"
    );
    wait_for(
        "the rows on the replica behind the read-only pooler",
        Duration::from_secs(30),
        || async {
            let rows = answer(
                readonly
                    .simple_query("SELECT count(*) FROM places")
                    .await
                    .ok()?,
            );
            (rows.as_deref() == Some("3")).then_some(())
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_suite() {
    let client = Client::try_default()
        .await
        .expect("KUBECONFIG must point at a cluster with geodb installed");
    let ns = format!("e2e-postgis-{}", std::process::id());
    let passed = geodb_e2e::kube_util::run_in_namespace(&client, &ns, |client, ns| async move {
        scenario_postgis_cluster(&client, &ns).await
    })
    .await;
    assert!(
        passed,
        "scenario postgis_cluster failed (diagnostics above)"
    );
}
