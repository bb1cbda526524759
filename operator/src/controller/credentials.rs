//! The roles' passwords: read from their Secrets, generated once for a Secret that does
//! not exist yet, never rotated by the operator.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use rand::distr::{Alphanumeric, SampleString};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::read::Observed;
use super::{claims, Context};
use crate::builders::Credentials;
use crate::error::{Error, Result};
use crate::names::Names;
use crate::pod_contract::PASSWORD_FILE;

/// A random password: 32 alphanumeric characters (about 190 bits).
pub fn generate_password() -> String {
    Alphanumeric.sample_string(&mut StdRng::from_os_rng(), 32)
}

fn stored_password(secret: &Secret, name: &str) -> Result<Option<String>> {
    let malformed = || Error::MalformedSecret {
        name: name.to_owned(),
        key: PASSWORD_FILE,
    };
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(PASSWORD_FILE))
        .ok_or_else(malformed)?;
    String::from_utf8(bytes.0.clone())
        .ok()
        .filter(|p| !p.is_empty())
        .map(Some)
        .ok_or_else(malformed)
}

/// Passwords from the existing Secrets; a new one only for a Secret that does not exist.
/// A Secret missing from the cache is read from the API server before a password is
/// generated: a cache that lags must never lead to a new password. Only Secrets this
/// GeoDatabase controls or that a deleted one of its name kept are read: someone
/// else's Secret under the name is a name conflict (`claims`), never a password source.
/// The flag says whether any password was generated.
pub async fn credentials(
    ctx: &Context,
    namespace: &str,
    uid: &str,
    names: &Names,
    observed: &Observed,
) -> Result<(Credentials, bool)> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let mut passwords = Vec::new();
    for name in [
        names.superuser_secret(),
        names.replication_secret(),
        names.app_secret(),
        names.pooler_login_secret(),
    ] {
        let password = match observed.secret(&name) {
            Some(secret) => stored_password(secret, &name)?,
            None => match api
                .get_opt(&name)
                .await
                .map_err(Error::kube("reading a credentials Secret"))?
            {
                Some(secret) if claims::may_read_credentials(&secret, &names.cluster, uid) => {
                    stored_password(&secret, &name)?
                }
                _ => None,
            },
        };
        passwords.push(password);
    }
    let generated = passwords.iter().any(Option::is_none);
    let mut take = passwords
        .into_iter()
        .map(|p| p.unwrap_or_else(generate_password));
    let mut next = || take.next().unwrap_or_else(generate_password);
    Ok((
        Credentials {
            superuser: next(),
            replication: next(),
            app: next(),
            pooler: next(),
        },
        generated,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    fn secret(name: &str, password: &str) -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                "password".to_owned(),
                ByteString(password.as_bytes().to_vec()),
            )])),
            ..Default::default()
        }
    }

    #[test]
    fn stored_passwords_are_read() {
        assert_eq!(
            stored_password(&secret("geo-app", "kept"), "geo-app").unwrap(),
            Some("kept".to_owned())
        );
    }

    #[test]
    fn empty_password_is_an_error_not_a_rotation() {
        assert!(matches!(
            stored_password(&secret("geo-app", ""), "geo-app"),
            Err(Error::MalformedSecret { .. })
        ));
    }

    #[test]
    fn generated_passwords_differ() {
        let (a, b) = (generate_password(), generate_password());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
