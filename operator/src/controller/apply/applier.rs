//! The applier: server-side apply under one field manager, create-once for credentials,
//! deletion of owned objects no longer wanted.
//!
//! An object is sent only when what we would send differs from what we last sent, or
//! when someone else changed it since (its uid or generation / resourceVersion moved).
//! So a reconcile of an unchanged GeoDatabase writes nothing.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;

use crate::builders::content_hash;
use crate::controller::owned::{OwnedKind, Pruner};
use crate::error::{Error, Result};
use crate::names::{ANNOTATION_RETAINED, FIELD_MANAGER};

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct CacheKey {
    cluster: String,
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
    /// Forget everything applied for one GeoDatabase (it was deleted).
    pub fn forget_cluster(&self, namespace: &str, cluster: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.retain(|key, _| !(key.namespace == namespace && key.cluster == cluster));
        }
    }
    /// Whether anything is remembered of one GeoDatabase.
    pub fn remembers(&self, namespace: &str, cluster: &str) -> bool {
        self.0.lock().is_ok_and(|map| {
            map.keys()
                .any(|key| key.namespace == namespace && key.cluster == cluster)
        })
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
    pub cluster: &'a str,
    pub cache: &'a AppliedCache,
    /// Independent objects are applied concurrently, so changes are collected behind a lock.
    changes: Mutex<Changes>,
}

impl<'a> Applier<'a> {
    pub fn new(
        client: &'a Client,
        namespace: &'a str,
        cluster: &'a str,
        cache: &'a AppliedCache,
    ) -> Self {
        Self {
            client,
            namespace,
            cluster,
            cache,
            changes: Mutex::new(Changes::default()),
        }
    }

    pub fn record(&self, update: impl FnOnce(&mut Changes)) {
        if let Ok(mut changes) = self.changes.lock() {
            update(&mut changes);
        }
    }

    pub fn into_changes(self) -> Changes {
        self.changes.into_inner().unwrap_or_default()
    }

    pub fn api<K>(&self) -> Api<K>
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

    /// Whether this process has applied an object of `desired`'s kind and name.
    pub fn applied_before<K: Resource<DynamicType = ()>>(&self, desired: &K) -> bool {
        self.cache.get(&self.key_of(desired)).is_some()
    }

    fn key_of<K: Resource<DynamicType = ()>>(&self, desired: &K) -> CacheKey {
        CacheKey {
            cluster: self.cluster.to_owned(),
            kind: K::kind(&()).to_string(),
            namespace: self.namespace.to_owned(),
            name: desired.name_any(),
        }
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
        Ok((self.key_of(desired), content_hash(&[&body])))
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
            .map_err(Error::writing(
                format!("{}/{}", key.kind, key.name),
                "applying an owned object",
            ))?;
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
    /// Create an object whose spec never changes once made (a Job); an existing one
    /// stands.
    pub async fn create_if_missing<K: OwnedKind>(&self, desired: &K, exists: bool) -> Result<()> {
        if exists {
            return Ok(());
        }
        match self
            .api::<K>()
            .create(&PostParams::default(), desired)
            .await
        {
            Ok(_) => {
                self.record(|c| {
                    c.created
                        .push(format!("{}/{}", K::kind(&()), desired.name_any()))
                });
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(e) => Err(Error::writing(
                format!("{}/{}", K::kind(&()), desired.name_any()),
                "creating an object",
            )(e)),
        }
    }

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
            // It exists: kept by a deleted GeoDatabase of this name (adopted), or written
            // by another writer first; its password stands either way.
            Err(kube::Error::Api(status)) if status.code == 409 => self.adopt_kept(desired).await,
            Err(e) => Err(Error::writing(
                format!("Secret/{}", desired.name_any()),
                "creating a credentials Secret",
            )(e)),
        }
    }

    /// Take over a credentials Secret that a deleted GeoDatabase of the same name kept for
    /// its successor (it carries `ANNOTATION_RETAINED`): it gets this GeoDatabase as owner.
    async fn adopt_kept(&self, desired: &Secret) -> Result<()> {
        let name = desired.name_any();
        let api = self.api::<Secret>();
        let existing = api
            .get_opt(&name)
            .await
            .map_err(Error::kube("reading a credentials Secret"))?;
        let kept = existing.is_some_and(|s| {
            s.annotations().contains_key(ANNOTATION_RETAINED) && s.owner_references().is_empty()
        });
        if !kept {
            return Ok(());
        }
        let patch = serde_json::json!({"metadata": {
            "ownerReferences": desired.metadata.owner_references,
            "annotations": {ANNOTATION_RETAINED: null},
        }});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(Error::kube("adopting a kept credentials Secret"))?;
        self.record(|c| c.updated.push(format!("Secret/{name} (adopted)")));
        Ok(())
    }
}

impl Pruner for Applier<'_> {
    /// Delete owned objects of kind `K` whose names are not wanted.
    async fn delete_unwanted<K: OwnedKind>(
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
                cluster: self.cluster.to_owned(),
                kind: K::kind(&()).to_string(),
                namespace: self.namespace.to_owned(),
                name: name.clone(),
            });
            self.record(|c| c.deleted.push(format!("{}/{name}", K::kind(&()))));
        }
        Ok(())
    }
}
