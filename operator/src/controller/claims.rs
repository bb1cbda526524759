//! No takeover: before anything is applied, every name the build wants is checked
//! against what already exists under it. An object this GeoDatabase does not control is
//! never written, adopted or read for credentials; the reconcile stops with a Degraded
//! name conflict instead, and nothing of the build is applied.
//!
//! Two kinds of existing objects are not conflicts:
//! - credentials Secrets that a deleted GeoDatabase of the same name kept for its
//!   successor (`deletionPolicy: Retain`): no owner, the retained annotation and this
//!   cluster's label; the applier adopts them (their passwords match the kept volumes);
//! - objects of an earlier GeoDatabase of the same name that is gone: the garbage
//!   collector removes them, and the reconcile waits for it.

use futures::future::try_join_all;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use super::apply::Applier;
use super::read::Observed;
use crate::api::GeoDatabase;
use crate::builders::Resources;
use crate::controller::owned::OwnedKind;
use crate::error::{Error, Result};
use crate::names::{ANNOTATION_RETAINED, LABEL_CLUSTER};

/// What an existing object under a wanted name is to this GeoDatabase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Controlled by this GeoDatabase.
    Ours,
    /// Credentials kept by a deleted GeoDatabase of this name for its successor.
    Kept,
    /// Controlled by an earlier GeoDatabase of this name: the garbage collector's.
    Leftover,
    /// Someone else's: never touched. Says who controls it, if anyone.
    Foreign(String),
}

/// Whose `meta` is, for the GeoDatabase `cluster` with uid `uid` (pure).
pub fn claim(meta: &ObjectMeta, cluster: &str, uid: &str, credentials: bool) -> Claim {
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    let controller = owners.iter().find(|r| r.controller == Some(true));
    match controller {
        Some(r) if r.uid == uid => Claim::Ours,
        Some(r) if r.kind == GeoDatabase::kind(&()) && r.name == cluster => Claim::Leftover,
        Some(r) => Claim::Foreign(format!("controlled by {} {}", r.kind, r.name)),
        None => {
            let annotations = meta.annotations.as_ref();
            let labels = meta.labels.as_ref();
            let kept = credentials
                && owners.is_empty()
                && annotations.is_some_and(|a| a.contains_key(ANNOTATION_RETAINED))
                && labels
                    .and_then(|l| l.get(LABEL_CLUSTER))
                    .map(String::as_str)
                    == Some(cluster);
            if kept {
                Claim::Kept
            } else {
                Claim::Foreign("not created by this GeoDatabase".to_owned())
            }
        }
    }
}

/// What the names check found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Check {
    /// One sentence per object that is someone else's.
    pub conflicts: Vec<String>,
    /// Objects of an earlier GeoDatabase of this name, still being removed.
    pub leftovers: Vec<String>,
}

/// Look up every wanted name that this GeoDatabase is not known to control.
pub async fn check(
    applier: &Applier<'_>,
    db: &GeoDatabase,
    resources: &Resources,
    observed: &Observed,
) -> Result<Check> {
    let uid = db.uid().ok_or(Error::MissingObjectKey)?;
    let cluster = db.name_any();
    let live = &observed.owned;
    let who = Who {
        applier,
        cluster: &cluster,
        uid: &uid,
    };
    let found = futures::try_join!(
        who.look(&resources.credentials, &live.secrets, true),
        who.look(&resources.secrets, &live.secrets, false),
        who.look(&resources.config_maps, &live.config_maps, false),
        who.look(&resources.services, &live.services, false),
        who.look(&resources.deployments, &live.deployments, false),
        who.look(&resources.statefulsets, &live.statefulsets, false),
        who.look(&resources.cron_jobs, &live.cron_jobs, false),
        who.look(&resources.jobs, &live.jobs, false),
        who.look(&resources.network_policies, &live.network_policies, false),
        who.look(
            &resources.pod_disruption_budgets,
            &live.pod_disruption_budgets,
            false
        ),
        who.look_unwatched(&resources.service_account),
        who.look_unwatched(&resources.role_binding),
    )?;
    let mut out = Check::default();
    for (label, claim) in [
        found.0, found.1, found.2, found.3, found.4, found.5, found.6, found.7, found.8, found.9,
        found.10, found.11,
    ]
    .into_iter()
    .flatten()
    {
        match claim {
            Claim::Ours | Claim::Kept => {}
            Claim::Leftover => out.leftovers.push(label),
            Claim::Foreign(whose) => out.conflicts.push(format!(
                "{label} already exists and is {whose}; it is left untouched: remove or rename it, or give this GeoDatabase another name"
            )),
        }
    }
    Ok(out)
}

/// Credentials may be read from `secret` (see [`claim`]).
pub fn may_read_credentials(secret: &Secret, cluster: &str, uid: &str) -> bool {
    matches!(
        claim(&secret.metadata, cluster, uid, true),
        Claim::Ours | Claim::Kept
    )
}

struct Who<'a> {
    applier: &'a Applier<'a>,
    cluster: &'a str,
    uid: &'a str,
}

impl Who<'_> {
    /// The claims on the names of `desired` that `live` (this GeoDatabase's) lacks.
    async fn look<K: OwnedKind>(
        &self,
        desired: &[K],
        live: &[K],
        credentials: bool,
    ) -> Result<Vec<(String, Claim)>> {
        let unknown = desired
            .iter()
            .filter(|d| !live.iter().any(|l| l.name_any() == d.name_any()));
        let found =
            try_join_all(unknown.map(|d| self.existing::<K>(d.name_any(), credentials))).await?;
        Ok(found.into_iter().flatten().collect())
    }

    /// An object that is not watched: looked up until this process has applied it.
    async fn look_unwatched<K: OwnedKind>(&self, desired: &K) -> Result<Vec<(String, Claim)>> {
        if self.applier.applied_before(desired) {
            return Ok(Vec::new());
        }
        Ok(self
            .existing::<K>(desired.name_any(), false)
            .await?
            .into_iter()
            .collect())
    }

    async fn existing<K: OwnedKind>(
        &self,
        name: String,
        credentials: bool,
    ) -> Result<Option<(String, Claim)>> {
        let found = self
            .applier
            .api::<K>()
            .get_opt(&name)
            .await
            .map_err(Error::kube("looking up a name before applying"))?;
        Ok(found.map(|o| {
            let label = format!("{}/{name}", K::kind(&()));
            (label, claim(o.meta(), self.cluster, self.uid, credentials))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use std::collections::BTreeMap;

    fn owned_by(kind: &str, name: &str, uid: &str) -> ObjectMeta {
        ObjectMeta {
            owner_references: Some(vec![OwnerReference {
                kind: kind.into(),
                name: name.into(),
                uid: uid.into(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    fn kept(cluster: &str) -> ObjectMeta {
        ObjectMeta {
            annotations: Some(BTreeMap::from([(
                ANNOTATION_RETAINED.into(),
                "true".into(),
            )])),
            labels: Some(BTreeMap::from([(LABEL_CLUSTER.into(), cluster.into())])),
            ..Default::default()
        }
    }

    #[test]
    fn ours_leftover_and_foreign() {
        assert_eq!(
            claim(&owned_by("GeoDatabase", "geo", "u1"), "geo", "u1", false),
            Claim::Ours
        );
        assert_eq!(
            claim(&owned_by("GeoDatabase", "geo", "u0"), "geo", "u1", false),
            Claim::Leftover
        );
        assert_eq!(
            claim(&owned_by("GeoDatabase", "other", "u2"), "geo", "u1", false),
            Claim::Foreign("controlled by GeoDatabase other".into())
        );
        assert_eq!(
            claim(&owned_by("Deployment", "web", "u3"), "geo", "u1", false),
            Claim::Foreign("controlled by Deployment web".into())
        );
        assert!(matches!(
            claim(&ObjectMeta::default(), "geo", "u1", false),
            Claim::Foreign(_)
        ));
    }

    #[test]
    fn only_kept_credentials_of_this_name_are_adopted() {
        assert_eq!(claim(&kept("geo"), "geo", "u1", true), Claim::Kept);
        // Kept for another GeoDatabase, or not a credentials Secret: someone else's.
        assert!(matches!(
            claim(&kept("other"), "geo", "u1", true),
            Claim::Foreign(_)
        ));
        assert!(matches!(
            claim(&kept("geo"), "geo", "u1", false),
            Claim::Foreign(_)
        ));
        // A Secret that merely looks kept but has an owner is not.
        let mut owned = kept("geo");
        owned.owner_references = owned_by("Deployment", "web", "u3").owner_references;
        assert!(matches!(
            claim(&owned, "geo", "u1", true),
            Claim::Foreign(_)
        ));
        // No annotation: someone's own Secret of that name.
        let mut plain = kept("geo");
        plain.annotations = None;
        assert!(matches!(
            claim(&plain, "geo", "u1", true),
            Claim::Foreign(_)
        ));
    }
}
