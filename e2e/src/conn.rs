//! SQL connections of the cluster suites: from a GeoDatabase's connection Secret, to a
//! Service's ClusterIP (the tests run on the node, outside cluster DNS).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, Service};
use kube::{Api, Client};
use tokio_postgres::NoTls;

pub struct Conn {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub dbname: String,
}

pub async fn connect(conn: &Conn) -> tokio_postgres::Client {
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
pub async fn connection_for(client: &Client, ns: &str, secret: &str, service: &str) -> Conn {
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
