//! Apply step: server-side apply of the built objects under one field manager, deletion
//! of objects no longer wanted, and role labels on instance pods.
//!
//! An object is sent only when what we would send differs from what we last sent, or
//! when someone else changed it since (its uid or generation / resourceVersion moved).
//! So a reconcile of an unchanged GeoDatabase writes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::Mutex;

use futures::future::try_join_all;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use super::read::Observed;
use crate::api::{DeletionPolicy, Role};
use crate::builders::{self, content_hash, Cluster};
use crate::error::{Error, Result};
use crate::names::{Names, FIELD_MANAGER, LABEL_ROLE, LABEL_SERVING_READS};
use crate::quantity::parse_quantity;

/// What the applier needs of an owned object's type: a namespaced API kind that can be
/// sent and read back.
pub trait OwnedKind:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + Serialize
    + DeserializeOwned
    + Debug
{
}

impl<K> OwnedKind for K where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug
{
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct CacheKey {
    kind: String,
    namespace: String,
    name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Applied {
    desired_hash: String,
    /// uid plus generation (or resourceVersion for kinds without generation) after our apply.
    live_marker: String,
}

/// What this process last applied, per object. Empty after a restart, so the first
/// reconcile after a restart re-applies everything once.
#[derive(Default)]
pub struct AppliedCache(Mutex<HashMap<CacheKey, Applied>>);

impl AppliedCache {
    fn get(&self, key: &CacheKey) -> Option<Applied> {
        self.0.lock().ok()?.get(key).cloned()
    }
    fn put(&self, key: CacheKey, value: Applied) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(key, value);
        }
    }
    fn forget(&self, key: &CacheKey) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(key);
        }
    }
}

fn live_marker<K: Resource>(obj: &K) -> String {
    let meta = obj.meta();
    let version = match meta.generation {
        Some(generation) => format!("g{generation}"),
        None => format!("rv{}", meta.resource_version.as_deref().unwrap_or_default()),
    };
    format!("{}/{version}", meta.uid.as_deref().unwrap_or_default())
}

/// What one apply step changed, for Events and the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub deleted: Vec<String>,
    pub resized: Vec<String>,
    pub relabelled: Vec<String>,
    /// Something is still in motion (e.g. a StatefulSet recreated for a resize).
    pub requeue_soon: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.created.is_empty()
            && self.updated.is_empty()
            && self.deleted.is_empty()
            && self.resized.is_empty()
            && self.relabelled.is_empty()
    }
}

pub struct Applier<'a> {
    pub client: &'a Client,
    pub namespace: &'a str,
    pub cache: &'a AppliedCache,
    /// Independent objects are applied concurrently, so changes are collected behind a lock.
    changes: Mutex<Changes>,
}

impl<'a> Applier<'a> {
    pub fn new(client: &'a Client, namespace: &'a str, cache: &'a AppliedCache) -> Self {
        Self {
            client,
            namespace,
            cache,
            changes: Mutex::new(Changes::default()),
        }
    }

    fn record(&self, update: impl FnOnce(&mut Changes)) {
        if let Ok(mut changes) = self.changes.lock() {
            update(&mut changes);
        }
    }

    pub fn into_changes(self) -> Changes {
        self.changes.into_inner().unwrap_or_default()
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), self.namespace)
    }

    /// Server-side apply `desired` unless it is already in place.
    pub async fn apply<K>(&self, desired: &K, live: Option<&K>) -> Result<()>
    where
        K: OwnedKind,
    {
        let (key, desired_hash) = self.key_and_hash(desired)?;
        let label = format!("{}/{}", key.kind, key.name);
        if let (Some(live), Some(last)) = (live, self.cache.get(&key)) {
            if last.desired_hash == desired_hash && last.live_marker == live_marker(live) {
                return Ok(());
            }
        }
        let applied = self.send(desired, key, desired_hash).await?;
        match live {
            None => self.record(|c| c.created.push(label)),
            Some(live)
                if live.meta().generation != applied.meta().generation
                    || live.resource_version() != applied.resource_version() =>
            {
                self.record(|c| c.updated.push(label))
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Apply an object the operator does not watch: sent once per process and content.
    pub async fn apply_unwatched<K>(&self, desired: &K) -> Result<()>
    where
        K: OwnedKind,
    {
        let (key, desired_hash) = self.key_and_hash(desired)?;
        if self
            .cache
            .get(&key)
            .is_some_and(|last| last.desired_hash == desired_hash)
        {
            return Ok(());
        }
        self.send(desired, key, desired_hash).await.map(|_| ())
    }

    /// Where the cache keeps `desired`, and the hash of what would be sent.
    fn key_and_hash<K>(&self, desired: &K) -> Result<(CacheKey, String)>
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let body = serde_json::to_vec(desired).map_err(|source| Error::Serialize {
            what: "an owned object",
            source,
        })?;
        let key = CacheKey {
            kind: K::kind(&()).to_string(),
            namespace: self.namespace.to_owned(),
            name: desired.name_any(),
        };
        Ok((key, content_hash(&[&body])))
    }

    /// Server-side apply `desired` and remember what was sent.
    async fn send<K>(&self, desired: &K, key: CacheKey, desired_hash: String) -> Result<K>
    where
        K: OwnedKind,
    {
        let applied = self
            .api::<K>()
            .patch(
                &desired.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(desired),
            )
            .await
            .map_err(Error::kube("applying an owned object"))?;
        self.cache.put(
            key,
            Applied {
                desired_hash,
                live_marker: live_marker(&applied),
            },
        );
        Ok(applied)
    }

    /// Create a Secret only if it does not exist: credentials are never rewritten.
    pub async fn create_once(&self, desired: &Secret, exists: bool) -> Result<()> {
        if exists {
            return Ok(());
        }
        match self
            .api::<Secret>()
            .create(&PostParams::default(), desired)
            .await
        {
            Ok(_) => {
                self.record(|c| c.created.push(format!("Secret/{}", desired.name_any())));
                Ok(())
            }
            // Another writer was first; its password stands.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(e) => Err(Error::kube("creating a credentials Secret")(e)),
        }
    }

    /// Delete owned objects of kind `K` whose names are not wanted.
    pub async fn delete_unwanted<K: OwnedKind>(
        &self,
        live: &[K],
        wanted: &BTreeSet<String>,
    ) -> Result<()> {
        for obj in live {
            let name = obj.name_any();
            if wanted.contains(&name) || obj.meta().deletion_timestamp.is_some() {
                continue;
            }
            self.api::<K>()
                .delete(&name, &DeleteParams::background())
                .await
                .map_err(Error::kube("deleting an object no longer wanted"))?;
            self.cache.forget(&CacheKey {
                kind: K::kind(&()).to_string(),
                namespace: self.namespace.to_owned(),
                name: name.clone(),
            });
            self.record(|c| c.deleted.push(format!("{}/{name}", K::kind(&()))));
        }
        Ok(())
    }

    /// Volume claim templates are immutable: a StatefulSet whose template asks for another
    /// size is deleted with its pod orphaned, and the next reconcile recreates it (it
    /// adopts the running pod). The PVCs themselves are grown by [`Self::grow_volumes`].
    pub async fn recreate_for_resize(&self, live: &StatefulSet, size: &str) -> Result<()> {
        let name = live.name_any();
        self.api::<StatefulSet>()
            .delete(&name, &DeleteParams::orphan())
            .await
            .map_err(Error::kube("recreating a StatefulSet for a volume resize"))?;
        self.record(|c| {
            c.resized.push(format!("{name} to {size}"));
            c.requeue_soon = true;
        });
        Ok(())
    }

    /// Raise the request of bound data volumes smaller than the spec. An unbound claim
    /// cannot be resized; it is grown once bound.
    pub async fn grow_volumes(
        &self,
        cluster: &Cluster,
        pvcs: &[PersistentVolumeClaim],
    ) -> Result<()> {
        let size = &cluster.spec.storage.size;
        let Some(wanted) = parse_quantity(size) else {
            return Ok(());
        };
        for instance in &cluster.instances {
            let Some(pvc) = pvcs.iter().find(|p| p.name_any() == Names::pvc(instance)) else {
                continue;
            };
            let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
            let requested = pvc
                .spec
                .as_ref()
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
                .and_then(|q| parse_quantity(&q.0));
            if !bound || pvc.meta().deletion_timestamp.is_some() {
                if requested.is_some_and(|r| r < wanted) {
                    self.record(|c| c.requeue_soon = true);
                }
                continue;
            }
            if requested.is_some_and(|r| r >= wanted) {
                continue;
            }
            self.api::<PersistentVolumeClaim>()
                .patch(
                    &pvc.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"resources": {"requests": {"storage": size}}}})),
                )
                .await
                .map_err(Error::kube(
                    "growing a data volume (does its StorageClass allow volume expansion?)",
                ))?;
            self.record(|c| c.resized.push(format!("{} to {size}", pvc.name_any())));
        }
        Ok(())
    }

    /// Label instance pods with their role; Services select on it.
    /// Set the role and serving-reads labels the Services select on.
    pub async fn label_roles(&self, roles: &BTreeMap<String, PodRole>, pods: &[Pod]) -> Result<()> {
        for (instance, wanted) in roles {
            let Some(pod) = pods.iter().find(|p| p.name_any() == Names::pod(instance)) else {
                continue;
            };
            let serving = wanted.serving_reads.to_string();
            let labels = pod.labels();
            if labels.get(LABEL_ROLE).map(String::as_str) == Some(wanted.role.as_str())
                && labels.get(LABEL_SERVING_READS) == Some(&serving)
            {
                continue;
            }
            self.api::<Pod>()
                .patch(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {
                        LABEL_ROLE: wanted.role.as_str(),
                        LABEL_SERVING_READS: serving,
                    }}})),
                )
                .await
                .map_err(Error::kube("labelling an instance pod"))?;
            let note = if wanted.role == Role::Replica {
                format!("{} as replica (serving reads: {serving})", pod.name_any())
            } else {
                format!("{} as primary", pod.name_any())
            };
            self.record(|c| c.relabelled.push(note));
        }
        Ok(())
    }
}

/// The labels an instance pod should carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodRole {
    pub role: Role,
    pub serving_reads: bool,
}

fn find<'o, K: Resource>(live: &'o [K], name: &str) -> Option<&'o K> {
    live.iter().find(|o| o.name_any() == name)
}

fn names_of<K: Resource>(objects: &[K]) -> BTreeSet<String> {
    objects.iter().map(|o| o.name_any()).collect()
}

/// Converge everything a cluster owns. StatefulSets go last, once their ConfigMap,
/// Secrets and Services exist.
pub async fn converge(
    client: &Client,
    cache: &AppliedCache,
    cluster: &Cluster,
    observed: &Observed,
    roles: &BTreeMap<String, PodRole>,
) -> Result<Changes> {
    let applier = Applier::new(client, &cluster.namespace, cache);

    let credentials = builders::secrets::credential_secrets(cluster);
    let mut config_maps = vec![builders::config::config_map(cluster)];
    let mut secrets = builders::secrets::connection_secrets(cluster);
    let mut services = builders::services::services(cluster);
    let mut deployments = Vec::new();
    if cluster.spec.pooler.enabled {
        secrets.push(builders::pooler::auth_secret(cluster));
        for access in builders::pooler::Access::BOTH {
            config_maps.push(builders::pooler::config_map(cluster, access));
            services.push(builders::pooler::service(cluster, access));
            deployments.push(builders::pooler::deployment(cluster, access));
        }
    }
    let statefulsets: Vec<StatefulSet> = cluster
        .instances
        .iter()
        .map(|instance| builders::instance::statefulset(cluster, instance))
        .collect();
    let service_account = builders::rbac::service_account(cluster);
    let role_binding = builders::rbac::role_binding(cluster);

    // Everything the StatefulSets' pods mount, run as or are reached through, at once:
    // none of these objects depends on another (the connection Secrets carry passwords
    // already read or generated).
    tokio::try_join!(
        try_join_all(credentials.iter().map(|secret| {
            applier.create_once(secret, observed.secret(&secret.name_any()).is_some())
        })),
        applier.apply_unwatched(&service_account),
        applier.apply_unwatched(&role_binding),
        try_join_all(
            config_maps
                .iter()
                .map(|o| applier.apply(o, find(&observed.config_maps, &o.name_any())))
        ),
        try_join_all(
            secrets
                .iter()
                .map(|o| applier.apply(o, find(&observed.secrets, &o.name_any())))
        ),
        try_join_all(
            services
                .iter()
                .map(|o| applier.apply(o, find(&observed.services, &o.name_any())))
        ),
        try_join_all(
            deployments
                .iter()
                .map(|o| applier.apply(o, find(&observed.deployments, &o.name_any())))
        ),
    )?;

    // Then the StatefulSets: their pods start with everything above in place.
    try_join_all(statefulsets.iter().map(|sts| async {
        let live = find(&observed.statefulsets, &sts.name_any());
        if let Some(live) = live {
            if live.meta().deletion_timestamp.is_some() {
                // Being recreated after a resize; applied once it is gone.
                applier.record(|c| c.requeue_soon = true);
                return Ok(());
            }
            let size = &cluster.spec.storage.size;
            let claimed = builders::instance::claimed_size(live);
            if claimed.is_some() && claimed != Some(size.as_str()) {
                return applier.recreate_for_resize(live, size).await;
            }
        }
        applier.apply(sts, live).await
    }))
    .await?;

    let mut wanted_secrets = names_of(&secrets);
    wanted_secrets.extend(names_of(&credentials));
    applier
        .delete_unwanted(&observed.statefulsets, &names_of(&statefulsets))
        .await?;
    applier
        .delete_unwanted(&observed.deployments, &names_of(&deployments))
        .await?;
    applier
        .delete_unwanted(&observed.services, &names_of(&services))
        .await?;
    applier
        .delete_unwanted(&observed.config_maps, &names_of(&config_maps))
        .await?;
    applier
        .delete_unwanted(&observed.secrets, &wanted_secrets)
        .await?;

    applier.grow_volumes(cluster, &observed.pvcs).await?;
    applier.label_roles(roles, &observed.pods).await?;
    Ok(applier.into_changes())
}

/// Deletion of a GeoDatabase: PVCs go only when the deletion policy says so. With
/// `Retain`, owner references that would let the garbage collector take a PVC are removed.
pub async fn release_volumes(
    client: &Client,
    namespace: &str,
    policy: DeletionPolicy,
    pvcs: &[PersistentVolumeClaim],
) -> Result<Vec<String>> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let mut touched = Vec::new();
    for pvc in pvcs {
        let name = pvc.name_any();
        match policy {
            DeletionPolicy::Delete => {
                if pvc.meta().deletion_timestamp.is_none() {
                    api.delete(&name, &DeleteParams::background())
                        .await
                        .map_err(Error::kube("deleting a data volume"))?;
                    touched.push(name);
                }
            }
            DeletionPolicy::Retain => {
                if !pvc.owner_references().is_empty() {
                    api.patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"ownerReferences": null}})),
                    )
                    .await
                    .map_err(Error::kube("keeping a data volume"))?;
                    touched.push(name);
                }
            }
        }
    }
    Ok(touched)
}
