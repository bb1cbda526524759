//! Read step: everything the reconciler needs from the API server, one list per kind.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::NamespaceResourceScope;
use kube::api::ListParams;
use kube::{Api, Client, Resource, ResourceExt};
use rand::distr::{Alphanumeric, SampleString};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::de::DeserializeOwned;

use crate::api::GeoDatabase;
use crate::builders::secrets::KEY_PASSWORD;
use crate::builders::Credentials;
use crate::error::{Error, Result};
use crate::names::{cluster_selector, Names};

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

async fn list<K>(client: &Client, namespace: &str, selector: &str) -> Result<Vec<K>>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    Ok(api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(Error::kube("listing owned objects"))?
        .items)
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

pub async fn observe(client: &Client, db: &GeoDatabase) -> Result<Observed> {
    let namespace = db.namespace().ok_or(Error::MissingObjectKey)?;
    let uid = db.uid().ok_or(Error::MissingObjectKey)?;
    let selector = cluster_selector(&Names::new(db).cluster);
    let (statefulsets, deployments, services, config_maps, secrets, pods, pvcs) = tokio::try_join!(
        list::<StatefulSet>(client, &namespace, &selector),
        list::<Deployment>(client, &namespace, &selector),
        list::<Service>(client, &namespace, &selector),
        list::<ConfigMap>(client, &namespace, &selector),
        list::<Secret>(client, &namespace, &selector),
        list::<Pod>(client, &namespace, &selector),
        list::<PersistentVolumeClaim>(client, &namespace, &selector),
    )?;
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
        statefulsets: owned(statefulsets, &uid),
        deployments: owned(deployments, &uid),
        services: owned(services, &uid),
        config_maps: owned(config_maps, &uid),
        secrets: owned(secrets, &uid),
        // Pods are owned by the StatefulSets, PVCs by nobody (or their StatefulSet).
        pods,
        pvcs,
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

fn stored_password(observed: &Observed, name: &str) -> Result<Option<String>> {
    let Some(secret) = observed.secret(name) else {
        return Ok(None);
    };
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
pub fn credentials(names: &Names, observed: &Observed) -> Result<(Credentials, bool)> {
    let superuser = stored_password(observed, &names.superuser_secret())?;
    let replication = stored_password(observed, &names.replication_secret())?;
    let app = stored_password(observed, &names.app_secret())?;
    let generated = superuser.is_none() || replication.is_none() || app.is_none();
    Ok((
        Credentials {
            superuser: superuser.unwrap_or_else(generate_password),
            replication: replication.unwrap_or_else(generate_password),
            app: app.unwrap_or_else(generate_password),
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
    fn existing_passwords_are_kept() {
        let names = Names {
            cluster: "geo".into(),
        };
        let observed = Observed {
            secrets: vec![secret("geo-app", "kept")],
            ..Observed::default()
        };
        let (creds, generated) = credentials(&names, &observed).unwrap();
        assert_eq!(creds.app, "kept");
        assert!(generated);
        assert_eq!(creds.superuser.len(), 32);
        assert_ne!(creds.superuser, creds.replication);
    }

    #[test]
    fn empty_password_is_an_error_not_a_rotation() {
        let names = Names {
            cluster: "geo".into(),
        };
        let observed = Observed {
            secrets: vec![secret("geo-app", "")],
            ..Observed::default()
        };
        assert!(matches!(
            credentials(&names, &observed),
            Err(Error::MalformedSecret { .. })
        ));
    }
}
