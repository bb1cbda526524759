//! SQL connections of the cluster suites: from a GeoDatabase's connection Secret, to a
//! Service's ClusterIP (the tests run on the node, outside cluster DNS).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, Service};
use kube::{Api, Client};
pub struct Conn {
    /// The address dialled (a ClusterIP).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub dbname: String,
    /// The name the server's certificate is checked for (the Service's DNS name).
    pub server_name: String,
    /// The cluster's CA (`ca.crt` of the connection Secret).
    pub ca_pem: String,
}

/// `config` with `address` dialled and `name` checked against the server's certificate
/// (what libpq's `hostaddr` and `host` do).
pub fn dial(config: &mut tokio_postgres::Config, address: &str, name: &str) {
    match address.parse::<std::net::IpAddr>() {
        Ok(ip) => config.host(name).hostaddr(ip),
        Err(_) => config.host(address),
    };
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
}

/// Connect over TLS that trusts `ca_pem` only (verify-full), the connection driven by a
/// task of its own.
pub async fn open_verified(
    config: &tokio_postgres::Config,
    ca_pem: &str,
) -> anyhow::Result<tokio_postgres::Client> {
    let tls = geodb::postgres::tls::client_config(ca_pem).map_err(anyhow::Error::msg)?;
    let (client, connection) = config
        .connect(geodb::postgres::tls::VerifyFull(tls))
        .await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A connection once the Service routes to a server that accepts it (a minute at
/// most): a GeoDatabase that says Ready can run ahead of its Services' endpoints, which
/// kube-proxy applies a moment later. Panics with the last error.
pub async fn connect(conn: &Conn) -> tokio_postgres::Client {
    let mut config = tokio_postgres::Config::new();
    dial(&mut config, &conn.host, &conn.server_name);
    config
        .port(conn.port)
        .user(&conn.user)
        .password(&conn.password)
        .dbname(&conn.dbname)
        .connect_timeout(Duration::from_secs(5));
    let last_error = std::sync::Mutex::new(String::new());
    let what = format!("a connection through {}:{}", conn.host, conn.port);
    let client = crate::kube_util::wait_for(&what, Duration::from_secs(60), || async {
        match open_verified(&config, &conn.ca_pem).await {
            Ok(client) => Some(client),
            Err(e) => {
                *last_error.lock().unwrap() = format!("{e:#}");
                None
            }
        }
    })
    .await;
    client.unwrap_or_else(|e| panic!("{e}; last error: {}", last_error.lock().unwrap()))
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
        server_name: text("host"),
        ca_pem: text("ca.crt"),
    }
}
