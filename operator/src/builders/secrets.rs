//! Secrets: role credentials (created once, never rewritten) and connection details
//! for applications (derived from the credentials, kept converged).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;

use super::Cluster;
use crate::names::{
    ANNOTATION_TLS_NAMES, ANNOTATION_TLS_NOT_AFTER, COMPONENT_DATABASE, POOLER_PORT, POOLER_USER,
    POSTGRES_PORT, REPLICATION_USER, SUPERUSER,
};

pub use crate::pod_contract::{CA_CERT, TLS_CERT, TLS_KEY};
/// The CA's key: only in the CA's Secret, which no pod mounts.
pub const CA_KEY: &str = "ca.key";

pub const KEY_USERNAME: &str = "username";
pub const KEY_PASSWORD: &str = crate::pod_contract::PASSWORD_FILE;

fn basic_auth(cluster: &Cluster, name: String, user: &str, password: &str) -> Secret {
    Secret {
        metadata: cluster.component_meta(name, COMPONENT_DATABASE),
        type_: Some("kubernetes.io/basic-auth".into()),
        string_data: Some(BTreeMap::from([
            (KEY_USERNAME.to_owned(), user.to_owned()),
            (KEY_PASSWORD.to_owned(), password.to_owned()),
        ])),
        ..Secret::default()
    }
}

/// The credential Secrets: superuser, replication, application and pooler lookup role.
pub fn credential_secrets(cluster: &Cluster) -> Vec<Secret> {
    let n = &cluster.names;
    let c = &cluster.credentials;
    vec![
        basic_auth(cluster, n.superuser_secret(), SUPERUSER, &c.superuser),
        basic_auth(
            cluster,
            n.replication_secret(),
            REPLICATION_USER,
            &c.replication,
        ),
        basic_auth(
            cluster,
            n.app_secret(),
            &cluster.spec.database.owner,
            &c.app,
        ),
        basic_auth(cluster, n.pooler_login_secret(), POOLER_USER, &c.pooler),
    ]
}

/// The CA's Secret (created once, never rewritten) and the server certificate's
/// (applied: it changes on renewal); `None` until the decide step issued them.
pub fn tls_secrets(cluster: &Cluster) -> Option<(Secret, Secret)> {
    let tls = cluster.tls.as_ref()?;
    let names = &cluster.names;
    let mut meta = cluster.component_meta(names.ca_secret(), COMPONENT_DATABASE);
    meta.annotations = Some(BTreeMap::from([(
        ANNOTATION_TLS_NOT_AFTER.to_owned(),
        tls.ca.not_after.to_string(),
    )]));
    let ca = Secret {
        metadata: meta,
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([
            (CA_CERT.to_owned(), tls.ca.cert_pem.clone()),
            (CA_KEY.to_owned(), tls.ca.key_pem.clone()),
        ])),
        ..Secret::default()
    };
    let mut meta = cluster.component_meta(names.server_tls_secret(), COMPONENT_DATABASE);
    meta.annotations = Some(BTreeMap::from([
        (
            ANNOTATION_TLS_NOT_AFTER.to_owned(),
            tls.server.not_after.to_string(),
        ),
        (ANNOTATION_TLS_NAMES.to_owned(), tls.names.clone()),
    ]));
    let server = Secret {
        metadata: meta,
        type_: Some("kubernetes.io/tls".into()),
        string_data: Some(BTreeMap::from([
            (TLS_CERT.to_owned(), tls.server.cert_pem.clone()),
            (TLS_KEY.to_owned(), tls.server.key_pem.clone()),
            (CA_CERT.to_owned(), tls.ca.cert_pem.clone()),
        ])),
        ..Secret::default()
    };
    Some((ca, server))
}

fn connection(cluster: &Cluster, name: String, host: String, port: i32) -> Secret {
    let user = &cluster.spec.database.owner;
    let dbname = &cluster.spec.database.name;
    let password = &cluster.credentials.app;
    // Generated passwords are alphanumeric, so the URI needs no escaping. The servers
    // refuse connections without TLS; the URI asks for it and works without a CA file,
    // `sslmode` and `ca.crt` are for clients that verify the server (they should).
    let uri = format!("postgresql://{user}:{password}@{host}:{port}/{dbname}?sslmode=require");
    let mut data = BTreeMap::from([
        ("uri".to_owned(), uri),
        ("host".to_owned(), host),
        ("port".to_owned(), port.to_string()),
        ("user".to_owned(), user.clone()),
        ("password".to_owned(), password.clone()),
        ("dbname".to_owned(), dbname.clone()),
        ("sslmode".to_owned(), "verify-full".to_owned()),
    ]);
    if let Some(tls) = &cluster.tls {
        data.insert(CA_CERT.to_owned(), tls.trusted_ca().to_owned());
    }
    Secret {
        metadata: cluster.component_meta(name, COMPONENT_DATABASE),
        type_: Some("Opaque".into()),
        string_data: Some(data),
        ..Secret::default()
    }
}

/// Connection Secrets for the application: read-write, read-only and (when the pooler is
/// enabled) both through PgBouncer.
pub fn connection_secrets(cluster: &Cluster) -> Vec<Secret> {
    let n = &cluster.names;
    let mut out = vec![
        connection(
            cluster,
            n.app_rw_secret(),
            cluster.service_host(&n.rw_service()),
            POSTGRES_PORT,
        ),
        connection(
            cluster,
            n.app_ro_secret(),
            cluster.service_host(&n.ro_service()),
            POSTGRES_PORT,
        ),
    ];
    if cluster.spec.pooler.enabled {
        out.push(connection(
            cluster,
            n.app_pooler_secret(),
            cluster.service_host(&n.pooler()),
            POOLER_PORT,
        ));
        out.push(connection(
            cluster,
            n.app_pooler_ro_secret(),
            cluster.service_host(&n.pooler_ro()),
            POOLER_PORT,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures::cluster;
    use serde_json::json;

    fn data(s: &Secret) -> &BTreeMap<String, String> {
        s.string_data.as_ref().unwrap()
    }

    #[test]
    fn credentials_use_the_roles() {
        let c = cluster(
            json!({"storage": {"size": "1Gi"}, "database": {"name": "maps", "owner": "mapper"}}),
        );
        let secrets = credential_secrets(&c);
        let names: Vec<_> = secrets
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "geo-superuser",
                "geo-replication",
                "geo-app",
                "geo-pooler-login"
            ]
        );
        assert_eq!(data(&secrets[3])["username"], "geodb_pooler");
        assert_eq!(data(&secrets[0])["username"], "postgres");
        assert_eq!(data(&secrets[1])["username"], "streaming_replica");
        assert_eq!(data(&secrets[2])["username"], "mapper");
        assert_eq!(data(&secrets[2])["password"], "app-pw");
    }

    #[test]
    fn connection_secrets_point_at_services() {
        let c = cluster(json!({"storage": {"size": "1Gi"}}));
        let secrets = connection_secrets(&c);
        assert_eq!(secrets.len(), 4);
        let rw = data(&secrets[0]);
        assert_eq!(rw["host"], "geo-rw.maps.svc");
        assert_eq!(
            rw["uri"],
            "postgresql://app:app-pw@geo-rw.maps.svc:5432/app?sslmode=require"
        );
        assert_eq!(rw["sslmode"], "verify-full");
        assert_eq!(data(&secrets[1])["host"], "geo-ro.maps.svc");
        assert_eq!(data(&secrets[2])["port"], "6432");
        assert_eq!(data(&secrets[3])["host"], "geo-pooler-ro.maps.svc");
    }

    #[test]
    fn no_pooler_secret_without_pooler() {
        let c = cluster(json!({"storage": {"size": "1Gi"}, "pooler": {"enabled": false}}));
        assert_eq!(connection_secrets(&c).len(), 2);
    }
}
