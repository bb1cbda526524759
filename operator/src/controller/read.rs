//! Read step: everything the reconciler needs from the API server, one list per kind.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use rand::distr::{Alphanumeric, SampleString};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::cache::Caches;
use crate::api::GeoDatabase;
use crate::builders::secrets::KEY_PASSWORD;
use crate::builders::Credentials;
use crate::error::{Error, Result};
use crate::names::{Names, LABEL_CLUSTER};

/// What exists now for one GeoDatabase (objects carrying its labels and owned by it).
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub statefulsets: Vec<StatefulSet>,
    pub deployments: Vec<Deployment>,
    pub services: Vec<Service>,
    pub config_maps: Vec<ConfigMap>,
    pub secrets: Vec<Secret>,
    pub pods: Vec<Pod>,
    pub pvcs: Vec<PersistentVolumeClaim>,
    /// `Some(false)` when `spec.storage.storageClassName` names a class that does not exist.
    pub storage_class_exists: Option<bool>,
}

/// Objects of `store` in `namespace` carrying the cluster's label.
fn cached<K>(store: &Store<K>, namespace: &str, cluster: &str) -> Vec<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .state()
        .into_iter()
        .filter(|o| {
            o.meta().namespace.as_deref() == Some(namespace)
                && o.labels().get(LABEL_CLUSTER).map(String::as_str) == Some(cluster)
        })
        .map(|o| o.as_ref().clone())
        .collect()
}

/// Keep objects controlled by this GeoDatabase (same name, same uid), so that leftovers
/// of an earlier GeoDatabase of the same name are never mistaken for ours.
fn owned<K: Resource>(items: Vec<K>, uid: &str) -> Vec<K> {
    items
        .into_iter()
        .filter(|o| {
            o.owner_references()
                .iter()
                .any(|r| r.controller == Some(true) && r.uid == uid)
        })
        .collect()
}

/// The cluster's objects, from the watch caches.
pub async fn observe(client: &Client, caches: &Caches, db: &GeoDatabase) -> Result<Observed> {
    let namespace = db.namespace().ok_or(Error::MissingObjectKey)?;
    let uid = db.uid().ok_or(Error::MissingObjectKey)?;
    let cluster = Names::new(db).cluster;
    caches.ready().await;
    let storage_class_exists = match &db.spec.storage.storage_class_name {
        Some(class) => Some(
            Api::<StorageClass>::all(client.clone())
                .get_opt(class)
                .await
                .map_err(Error::kube("reading the StorageClass"))?
                .is_some(),
        ),
        None => None,
    };
    Ok(Observed {
        statefulsets: owned(cached(&caches.statefulsets, &namespace, &cluster), &uid),
        deployments: owned(cached(&caches.deployments, &namespace, &cluster), &uid),
        services: owned(cached(&caches.services, &namespace, &cluster), &uid),
        config_maps: owned(cached(&caches.config_maps, &namespace, &cluster), &uid),
        secrets: owned(cached(&caches.secrets, &namespace, &cluster), &uid),
        // Pods are owned by the StatefulSets, PVCs by nobody (or their StatefulSet).
        pods: cached(&caches.pods, &namespace, &cluster),
        pvcs: cached(&caches.pvcs, &namespace, &cluster),
        storage_class_exists,
    })
}

impl Observed {
    pub fn secret(&self, name: &str) -> Option<&Secret> {
        self.secrets.iter().find(|s| s.name_any() == name)
    }

    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name_any() == name)
    }

    /// Instances that exist, by StatefulSet.
    pub fn instance_names(&self) -> Vec<String> {
        self.statefulsets.iter().map(|s| s.name_any()).collect()
    }
}

/// A random password: 32 alphanumeric characters (about 190 bits).
pub fn generate_password() -> String {
    Alphanumeric.sample_string(&mut StdRng::from_os_rng(), 32)
}

fn stored_password(secret: &Secret, name: &str) -> Result<Option<String>> {
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(KEY_PASSWORD))
        .ok_or_else(|| Error::MalformedSecret {
            name: name.to_owned(),
            key: KEY_PASSWORD,
        })?;
    String::from_utf8(bytes.0.clone())
        .ok()
        .filter(|p| !p.is_empty())
        .map(Some)
        .ok_or_else(|| Error::MalformedSecret {
            name: name.to_owned(),
            key: KEY_PASSWORD,
        })
}

/// Passwords from the existing Secrets; a new one only for a Secret that does not exist.
/// A Secret missing from the cache is read from the API server before a password is
/// generated: a cache that lags must never lead to a new password.
pub async fn credentials(
    client: &Client,
    namespace: &str,
    names: &Names,
    observed: &Observed,
) -> Result<(Credentials, bool)> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut passwords = Vec::new();
    for name in [
        names.superuser_secret(),
        names.replication_secret(),
        names.app_secret(),
    ] {
        let password = match observed.secret(&name) {
            Some(secret) => stored_password(secret, &name)?,
            None => match api
                .get_opt(&name)
                .await
                .map_err(Error::kube("reading a credentials Secret"))?
            {
                Some(secret) => stored_password(&secret, &name)?,
                None => None,
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
