//! The decide step's TLS material: the cluster's CA, read back from its Secret or made
//! once, and a server certificate, read back while it holds the right names, was signed
//! by that CA and is not due for renewal, else issued anew. Like the passwords, only
//! Secrets this GeoDatabase controls are read (`claims`); a CA is never replaced by the
//! operator.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::claims;
use super::read::Observed;
use super::Context;
use crate::api::GeoDatabaseSpec;
use crate::builders::secrets::{CA_CERT, CA_KEY, TLS_CERT, TLS_KEY};
use crate::builders::{content_hash, Cluster, Provided, Tls};
use crate::certs::{self, Issued};
use crate::error::{Error, Result};
use crate::names::{Names, ANNOTATION_TLS_NAMES, ANNOTATION_TLS_NOT_AFTER};
use crate::postgres::{Login, PgError};

/// Where the cluster is, for the certificate's names.
pub struct Subject<'a> {
    pub namespace: &'a str,
    pub uid: &'a str,
    pub names: &'a Names,
    /// Service and instance host names.
    pub hosts: Vec<String>,
    /// `spec.tls.serverSecret`, and the names (`<host>.<ns>.svc`) it must hold.
    pub provided: Option<(&'a str, Vec<String>)>,
}

impl<'a> Subject<'a> {
    pub fn new(
        namespace: &'a str,
        uid: &'a str,
        names: &'a Names,
        instances: &[String],
        spec: &'a GeoDatabaseSpec,
    ) -> Self {
        let services = [names.rw_service(), names.ro_service()];
        let poolers = [names.pooler(), names.pooler_ro()];
        let hosts: Vec<String> = services
            .iter()
            .chain(&poolers)
            .chain(instances)
            .cloned()
            .collect();
        // A provided certificate needs the names clients and the operator check.
        let provided = spec.tls.as_ref().map(|tls| {
            let checked = services
                .iter()
                .chain(poolers.iter().filter(|_| spec.pooler.enabled))
                .chain(instances)
                .map(|h| format!("{h}.{namespace}.svc"))
                .collect();
            (tls.server_secret.as_str(), checked)
        });
        Self {
            namespace,
            uid,
            names,
            hosts,
            provided,
        }
    }
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

/// The CA stored in `secret`. Its end bounds the server certificates it signs; a Secret
/// without the annotation (edited by hand) is taken to end a year from now.
fn stored_ca(secret: &Secret, now: i64) -> Option<Issued> {
    let not_after = secret
        .annotations()
        .get(ANNOTATION_TLS_NOT_AFTER)
        .and_then(|v| v.parse().ok())
        .unwrap_or(now + 365 * 86_400);
    Some(Issued {
        cert_pem: text(secret, CA_CERT)?,
        key_pem: text(secret, CA_KEY)?,
        not_after,
    })
}

/// The server certificate in `secret`, if it can stay: signed by `ca`, for `names`,
/// not due (pure).
pub fn reusable(secret: &Secret, ca: &Issued, names: &str, now: i64) -> Option<Issued> {
    let annotations = secret.annotations();
    let not_after: i64 = annotations.get(ANNOTATION_TLS_NOT_AFTER)?.parse().ok()?;
    let same_names = annotations.get(ANNOTATION_TLS_NAMES).map(String::as_str) == Some(names);
    let same_ca = text(secret, CA_CERT).as_deref() == Some(ca.cert_pem.as_str());
    (same_names && same_ca && !certs::due(not_after, now)).then_some(Issued {
        cert_pem: text(secret, TLS_CERT)?,
        key_pem: text(secret, TLS_KEY)?,
        not_after,
    })
}

/// A Secret of this GeoDatabase, from the cache or (when the cache lags) the API.
async fn ours(
    ctx: &Context,
    subject: &Subject<'_>,
    observed: &Observed,
    name: &str,
) -> Result<Option<Secret>> {
    if let Some(secret) = observed.secret(name) {
        return Ok(Some(secret.clone()));
    }
    let found = Api::<Secret>::namespaced(ctx.client.clone(), subject.namespace)
        .get_opt(name)
        .await
        .map_err(Error::kube("reading a TLS Secret"))?;
    Ok(found.filter(|s| {
        matches!(
            claims::claim(&s.metadata, &subject.names.cluster, subject.uid, false),
            claims::Claim::Ours
        )
    }))
}

/// How the operator logs in to the cluster's instances: the superuser over TLS that
/// trusts the cluster's CA only.
pub fn login(cluster: &Cluster) -> std::result::Result<Login, PgError> {
    let ca = cluster
        .tls
        .as_ref()
        .ok_or_else(|| PgError::Connect("no CA issued yet".into()))?;
    Login::new(
        &cluster.namespace,
        &cluster.credentials.superuser,
        ca.trusted_ca(),
    )
}

/// The cluster's TLS material, and what is wrong with a certificate the user brings.
pub async fn tls(
    ctx: &Context,
    subject: &Subject<'_>,
    observed: &Observed,
    now: i64,
) -> Result<(Tls, Vec<String>)> {
    let cluster = &subject.names.cluster;
    let stored = ours(ctx, subject, observed, &subject.names.ca_secret()).await?;
    let ca = match stored.as_ref().and_then(|s| stored_ca(s, now)) {
        Some(ca) => ca,
        None => certs::new_ca(cluster, subject.namespace, now).map_err(Error::Certificate)?,
    };
    let names = certs::server_names(&subject.hosts, subject.namespace);
    let names_hash = content_hash(&[names.join(",").as_bytes()]);
    let current = ours(ctx, subject, observed, &subject.names.server_tls_secret()).await?;
    let server = match current.and_then(|s| reusable(&s, &ca, &names_hash, now)) {
        Some(server) => server,
        None => certs::issue_server(&ca, cluster, subject.namespace, &names, now)
            .map_err(Error::Certificate)?,
    };
    let mut problems = Vec::new();
    let provided = match &subject.provided {
        Some((secret, required)) => match provided(ctx, subject.namespace, secret, required).await?
        {
            Ok(provided) => Some(provided),
            Err(problem) => {
                problems.push(format!("tls.serverSecret: the Secret {secret:?} {problem}"));
                None
            }
        },
        None => None,
    };
    let tls = Tls {
        ca,
        server,
        names: names_hash,
        provided,
    };
    Ok((tls, problems))
}

/// The user's certificate, if clients that trust its `ca.crt` accept it for every
/// required name now; else what is wrong with it.
async fn provided(
    ctx: &Context,
    namespace: &str,
    secret: &str,
    required: &[String],
) -> Result<std::result::Result<Provided, String>> {
    let found = Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .get_opt(secret)
        .await
        .map_err(Error::kube("reading the Secret tls.serverSecret names"))?;
    let Some(found) = found else {
        return Ok(Err("does not exist in this namespace".into()));
    };
    let (Some(cert), Some(ca)) = (text(&found, TLS_CERT), text(&found, CA_CERT)) else {
        return Ok(Err(format!("needs {TLS_CERT}, {TLS_KEY} and {CA_CERT}")));
    };
    // Expired or not yet valid is the renewer's to fix (cert-manager's, say): clients
    // see it at once, and refusing the spec would only stop failovers too.
    let now = rustls::pki_types::UnixTime::now();
    Ok(
        crate::postgres::tls::check_served(&ca, &cert, required, now, true)
            .map(|()| Provided {
                secret: secret.to_owned(),
                ca_pem: ca,
            })
            .map_err(|e| format!("holds a certificate clients would refuse: {e}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn secret(ca: &Issued, server: &Issued, names: &str) -> Secret {
        let data = |v: &str| ByteString(v.as_bytes().to_vec());
        let mut s = Secret {
            data: Some(BTreeMap::from([
                (CA_CERT.to_owned(), data(&ca.cert_pem)),
                (TLS_CERT.to_owned(), data(&server.cert_pem)),
                (TLS_KEY.to_owned(), data(&server.key_pem)),
            ])),
            ..Secret::default()
        };
        s.metadata.annotations = Some(BTreeMap::from([
            (
                ANNOTATION_TLS_NOT_AFTER.to_owned(),
                server.not_after.to_string(),
            ),
            (ANNOTATION_TLS_NAMES.to_owned(), names.to_owned()),
        ]));
        s
    }

    #[test]
    fn kept_until_due_renamed_or_resigned() {
        let now = 1_796_000_000;
        let ca = certs::new_ca("geo", "maps", now).unwrap();
        let names = vec!["geo-rw".to_owned()];
        let server = certs::issue_server(&ca, "geo", "maps", &names, now).unwrap();
        let stored = secret(&ca, &server, "h1");
        assert_eq!(reusable(&stored, &ca, "h1", now), Some(server.clone()));
        // Other names (an instance added), another CA, or close to its end: reissued.
        assert_eq!(reusable(&stored, &ca, "h2", now), None);
        let other = certs::new_ca("geo", "maps", now).unwrap();
        assert_eq!(reusable(&stored, &other, "h1", now), None);
        assert_eq!(
            reusable(&stored, &ca, "h1", server.not_after - 86_400),
            None
        );
    }
}
