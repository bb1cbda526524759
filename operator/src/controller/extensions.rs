//! Extensions step: the primary's application database keeps the extensions of
//! `spec.postgis`, created on startup, after a restore (a new timeline) and on every change
//! of the list, updated when the image brings newer versions; and PostGIS is checked by a
//! real query. The result is `status.postgis` and the `PostGISReady` condition.

use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::Context;
use crate::api::{ExtensionStatus, GeoDatabase, PostgisStatus};
use crate::builders::{content_hash, Cluster};
use crate::postgres::extensions::{ensure, Outcome};
use crate::postgres::probe::{ClusterHealth, Sample};
use crate::postgres::{connect_to, Login};

/// What a check depends on: when it changes, the database is checked again (pure).
pub fn digest(cluster: &Cluster, timeline: Option<i64>) -> String {
    let postgis = &cluster.spec.postgis;
    content_hash(&[
        postgis.wanted().join(",").as_bytes(),
        &[u8::from(postgis.auto_update)],
        cluster.spec.database.name.as_bytes(),
        cluster.primary.as_bytes(),
        timeline.unwrap_or_default().to_string().as_bytes(),
        cluster.spec.image().as_bytes(),
    ])
}

/// `status.postgis` from what a check found (pure).
pub fn status_of(outcome: &Outcome, checked: String) -> PostgisStatus {
    PostgisStatus {
        full_version: outcome.full_version.clone(),
        extensions: outcome
            .installed
            .iter()
            .map(|(name, version)| ExtensionStatus {
                name: name.clone(),
                version: version.clone(),
            })
            .collect(),
        checked,
        ready: outcome.missing.is_empty()
            && outcome.failure.is_none()
            && outcome.full_version.is_some(),
        problem: outcome.failure.clone(),
        unavailable: outcome.missing.clone(),
    }
}

/// Check the primary when what the last check depended on changed, or it found a
/// problem; else keep the last result. Only a steady cluster with a writable primary is
/// checked.
pub async fn step(
    ctx: &Context,
    db: &GeoDatabase,
    cluster: &Cluster,
    health: &ClusterHealth,
    login: Option<&Login>,
    steady: bool,
) -> Option<PostgisStatus> {
    let previous = db.status.as_ref().and_then(|s| s.postgis.clone());
    let primary = health.sample(&cluster.primary).and_then(Sample::primary);
    let (Some(primary), Some(login), true) = (primary, login, steady) else {
        return previous;
    };
    let checked = digest(cluster, primary.timeline);
    if previous
        .as_ref()
        .is_some_and(|p| p.ready && p.checked == checked)
    {
        return previous;
    }
    let address = health.address(&cluster.primary);
    let database = &cluster.spec.database.name;
    let wanted = cluster.spec.postgis.wanted();
    let outcome = match connect_to(&cluster.primary, address, login, database).await {
        Ok(client) => ensure(&client, &wanted, cluster.spec.postgis.auto_update).await,
        Err(error) => Err(error),
    };
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            warn!(%error, "checking the application database's extensions");
            return previous;
        }
    };
    let status = status_of(&outcome, checked);
    tell(ctx, db, &outcome, previous.as_ref(), &status).await;
    Some(status)
}

/// An Event for what was created or updated, and for a problem that is new.
async fn tell(
    ctx: &Context,
    db: &GeoDatabase,
    outcome: &Outcome,
    previous: Option<&PostgisStatus>,
    status: &PostgisStatus,
) {
    let database = &db.spec.database.name;
    if !outcome.created.is_empty() {
        let note = format!("created {} in {database}", outcome.created.join(", "));
        info!(%note, "extensions created");
        ctx.event(db, EventType::Normal, "ExtensionsCreated", note)
            .await;
    }
    for (name, from, to) in &outcome.updated {
        let note =
            format!("updated {name} from {from} to {to} in {database} (the image brought {to})");
        info!(%note, "extension updated");
        ctx.event(db, EventType::Normal, "ExtensionUpdated", note)
            .await;
    }
    let was = previous.map(|p| (&p.unavailable, &p.problem));
    if was == Some((&status.unavailable, &status.problem)) {
        return;
    }
    if !status.unavailable.is_empty() {
        let note = format!(
            "postgis.extensions: the image has no {}",
            status.unavailable.join(", ")
        );
        ctx.event(db, EventType::Warning, "ExtensionUnavailable", note)
            .await;
    }
    if let Some(problem) = &status.problem {
        ctx.event(db, EventType::Warning, "ExtensionFailed", problem.clone())
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_every_extension_and_an_answer() {
        let good = Outcome {
            installed: vec![("postgis".into(), "3.5.2".into())],
            full_version: Some("POSTGIS=\"3.5.2\"".into()),
            ..Outcome::default()
        };
        assert!(status_of(&good, "x".into()).ready);
        let missing = Outcome {
            missing: vec!["nope".into()],
            ..good.clone()
        };
        let s = status_of(&missing, "x".into());
        assert!(!s.ready);
        assert_eq!(s.unavailable, ["nope"]);
        let unanswered = Outcome {
            full_version: None,
            ..good
        };
        assert!(!status_of(&unanswered, "x".into()).ready);
    }
}
