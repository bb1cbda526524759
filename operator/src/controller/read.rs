//! Read step: what exists now for one GeoDatabase, from the watch caches (and the
//! StorageClass its spec names, from the API server).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, Secret};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::owned::{Owned, Related};
use super::validate::SecretKeys;
use super::Context;
use crate::api::GeoDatabase;
use crate::error::{Error, Result};
use crate::names::Names;
use crate::pod_contract::{INSTANCE_PARKED, PARKED_FRESH};

/// What exists now for one GeoDatabase.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Objects it owns (its label and a controller reference with its uid).
    pub owned: Owned,
    /// Its pods and data volumes.
    pub related: Related,
    /// `Some(false)` when `spec.storage.storageClassName` names a class that does not exist.
    pub storage_class_exists: Option<bool>,
    /// Pods whose agent waits for a human (a recent `InstanceParked` Event), with what
    /// it says.
    pub parked: BTreeMap<String, String>,
    /// The keys of the user's Secrets that `spec.backup` names.
    pub named_secrets: SecretKeys,
    /// The data of the ConfigMaps `spec.migrations.configMaps` names (`None`: missing).
    pub migration_sources: MigrationSources,
    /// The data of the ConfigMap `spec.monitoring.customQueries` names: `None` when none
    /// is named, `Some(None)` when it does not exist.
    pub custom_queries: Option<Option<BTreeMap<String, String>>>,
}

/// ConfigMap name to its data, `None` when it does not exist.
pub type MigrationSources = BTreeMap<String, Option<BTreeMap<String, String>>>;

/// The cluster's objects, from the watch caches.
pub async fn observe(ctx: &Context, db: &GeoDatabase) -> Result<Observed> {
    let namespace = db.namespace().ok_or(Error::MissingObjectKey)?;
    let uid = db.uid().ok_or(Error::MissingObjectKey)?;
    let cluster = Names::new(db).cluster;
    ctx.caches.ready().await;
    let storage_class_exists = match &db.spec.storage.storage_class_name {
        Some(class) => match Api::<StorageClass>::all(ctx.client.clone())
            .get_opt(class)
            .await
        {
            Ok(found) => Some(found.is_some()),
            // Installed for namespaces only: no cluster-wide read; the StorageClass is
            // then not checked (a missing one leaves the volume claims Pending).
            Err(kube::Error::Api(status)) if status.code == 403 => None,
            Err(e) => return Err(Error::kube("reading the StorageClass")(e)),
        },
        None => None,
    };
    let related = ctx.caches.related(&namespace, &cluster);
    let parked = parked(ctx, db, &namespace, &related.pods).await?;
    let named_secrets = named_secrets(ctx, db, &namespace).await?;
    let migration_sources = migration_sources(ctx, db, &namespace).await?;
    let custom_queries = match &db.spec.monitoring.custom_queries {
        Some(name) => Some(
            Api::<ConfigMap>::namespaced(ctx.client.clone(), &namespace)
                .get_opt(name)
                .await
                .map_err(Error::kube("reading the custom metric queries ConfigMap"))?
                .map(|c| c.data.unwrap_or_default()),
        ),
        None => None,
    };
    Ok(Observed {
        owned: ctx.caches.owned(&namespace, &cluster, &uid),
        related,
        storage_class_exists,
        parked,
        named_secrets,
        migration_sources,
        custom_queries,
    })
}

/// The ConfigMaps of built-in migrations: their contents are part of the run's inputs.
async fn migration_sources(
    ctx: &Context,
    db: &GeoDatabase,
    namespace: &str,
) -> Result<MigrationSources> {
    let Some(migrations) = db.spec.migrations.as_ref().filter(|m| m.image.is_none()) else {
        return Ok(MigrationSources::new());
    };
    let api = Api::<ConfigMap>::namespaced(ctx.client.clone(), namespace);
    let mut sources = MigrationSources::new();
    for name in &migrations.config_maps {
        let found = api
            .get_opt(name)
            .await
            .map_err(Error::kube("reading a migrations ConfigMap"))?;
        sources.insert(name.clone(), found.map(|c| c.data.unwrap_or_default()));
    }
    Ok(sources)
}

/// The key names (never the values) of the Secrets `spec.backup`,
/// `spec.bootstrap.recovery` and `spec.tls` name.
async fn named_secrets(ctx: &Context, db: &GeoDatabase, namespace: &str) -> Result<SecretKeys> {
    let names: BTreeSet<&String> = db
        .spec
        .object_stores()
        .into_iter()
        .flat_map(|(_, store)| {
            std::iter::once(&store.credentials.secret_name)
                .chain(store.ca.as_ref().map(|ca| &ca.secret_name))
        })
        .chain(db.spec.tls.as_ref().map(|t| &t.server_secret))
        .collect();
    let api = Api::<Secret>::namespaced(ctx.client.clone(), namespace);
    let mut keys = SecretKeys::new();
    for name in names {
        let secret = api
            .get_opt(name)
            .await
            .map_err(Error::kube("reading a Secret that the spec names"))?;
        let found = secret.map(|s| {
            s.data
                .unwrap_or_default()
                .into_keys()
                .chain(s.string_data.unwrap_or_default().into_keys())
                .collect()
        });
        keys.insert(name.clone(), found);
    }
    Ok(keys)
}

/// A running container that is not ready.
fn running_unready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .any(|c| !c.ready && c.state.as_ref().is_some_and(|s| s.running.is_some()))
}

/// The parked agents among `pods`, from their Events. Read only while a pod's container
/// runs unready (a parked agent keeps it so), never in a healthy cluster.
async fn parked(
    ctx: &Context,
    db: &GeoDatabase,
    namespace: &str,
    pods: &[Pod],
) -> Result<BTreeMap<String, String>> {
    let unready: Vec<String> = pods
        .iter()
        .filter(|p| running_unready(p))
        .map(ResourceExt::name_any)
        .collect();
    if unready.is_empty() {
        return Ok(BTreeMap::new());
    }
    let selector = format!(
        "involvedObject.name={},reason={INSTANCE_PARKED}",
        db.name_any()
    );
    let events = Api::<Event>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default().fields(&selector))
        .await
        .map_err(Error::kube("reading the instances' Events"))?;
    Ok(parked_from(&events.items, &unready, Timestamp::now()))
}

/// The newest note per pod in `unready` among Events younger than `PARKED_FRESH` (pure).
pub fn parked_from(
    events: &[Event],
    unready: &[String],
    now: Timestamp,
) -> BTreeMap<String, String> {
    let mut newest: BTreeMap<String, (Timestamp, String)> = BTreeMap::new();
    for event in events {
        let Some(pod) = event
            .reporting_instance
            .clone()
            .filter(|p| unready.contains(p))
        else {
            continue;
        };
        let seen = [
            event
                .series
                .as_ref()
                .and_then(|s| s.last_observed_time.as_ref())
                .map(|t| t.0),
            event.event_time.as_ref().map(|t| t.0),
            event.last_timestamp.as_ref().map(|t| t.0),
        ]
        .into_iter()
        .flatten()
        .max();
        let young = |t: &Timestamp| now.duration_since(*t).unsigned_abs().le(&PARKED_FRESH);
        let Some(seen) = seen.filter(young) else {
            continue;
        };
        if newest.get(&pod).is_none_or(|(t, _)| *t < seen) {
            newest.insert(pod, (seen, event.message.clone().unwrap_or_default()));
        }
    }
    newest
        .into_iter()
        .map(|(pod, (_, note))| (pod, note))
        .collect()
}

impl Observed {
    /// A pod runs unready: an agent may park it and say so only in an Event, which
    /// does not wake the controller, so look again soon.
    pub fn awaiting_pods(&self) -> bool {
        self.related.pods.iter().any(running_unready)
    }

    pub fn secret(&self, name: &str) -> Option<&Secret> {
        self.owned.secrets.iter().find(|s| s.name_any() == name)
    }

    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.related.pods.iter().find(|p| p.name_any() == name)
    }

    /// The pod of `instance`.
    pub fn instance_pod(&self, instance: &str) -> Option<&Pod> {
        self.pod(&Names::pod(instance))
    }

    /// Instances that exist, by StatefulSet.
    pub fn instance_names(&self) -> Vec<String> {
        self.owned
            .statefulsets
            .iter()
            .map(|s| s.name_any())
            .collect()
    }
}

/// The pod is Ready.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn event(pod: &str, at: Timestamp, note: &str) -> Event {
        Event {
            reporting_instance: Some(pod.to_owned()),
            event_time: Some(MicroTime(at)),
            message: Some(note.to_owned()),
            ..Event::default()
        }
    }

    #[test]
    fn the_newest_fresh_event_of_an_unready_pod_counts() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let ago = |s: i64| now - k8s_openapi::jiff::SignedDuration::from_secs(s);
        let events = [
            event("geo-1-0", ago(30), "geo-1 waits: newer"),
            event("geo-1-0", ago(400), "geo-1 waits: older"),
            event("geo-2-0", ago(3000), "geo-2 waits: long ago"),
            event("geo-3-0", ago(10), "geo-3 waits: but it is ready"),
        ];
        let unready = ["geo-1-0".to_owned(), "geo-2-0".to_owned()];
        let parked = parked_from(&events, &unready, now);
        assert_eq!(
            parked.into_iter().collect::<Vec<_>>(),
            vec![("geo-1-0".to_owned(), "geo-1 waits: newer".to_owned())]
        );
    }
}
