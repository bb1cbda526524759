//! Events (`events.k8s.io`) on the GeoDatabase for everything the operator changes.

use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::apply::Changes;
use super::Context;
use crate::api::GeoDatabase;

impl Context {
    /// Publish an Event on the GeoDatabase. A failure to publish is logged, not fatal.
    pub async fn event(&self, db: &GeoDatabase, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: reason.to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &db.object_ref(&())).await {
            warn!(%error, reason, "could not publish event");
        }
    }
}

/// Log and publish what one apply step changed; `generated` when passwords were made.
pub async fn report_changes(db: &GeoDatabase, ctx: &Context, changes: &Changes, generated: bool) {
    if changes.is_empty() {
        return;
    }
    let name = db.name_any();
    let namespace = db.namespace().unwrap_or_default();
    info!(%name, %namespace, created = ?changes.created, updated = ?changes.updated,
        deleted = ?changes.deleted, resized = ?changes.resized, relabelled = ?changes.relabelled,
        "applied changes");
    if generated {
        ctx.metrics.record_action("credentials_generated");
        ctx.event(
            db,
            EventType::Normal,
            "CredentialsCreated",
            "generated passwords for the superuser, replication and application roles".into(),
        )
        .await;
    }
    let groups: [(&str, &str, &Vec<String>); 5] = [
        ("Created", "created", &changes.created),
        ("Updated", "updated", &changes.updated),
        (
            "Deleted",
            "deleted objects no longer wanted",
            &changes.deleted,
        ),
        ("VolumeResized", "growing data volumes", &changes.resized),
        ("RoleLabelled", "labelled pods", &changes.relabelled),
    ];
    for (reason, verb, items) in groups {
        if items.is_empty() {
            continue;
        }
        ctx.metrics.record_action(&reason.to_lowercase());
        let mut note = format!("{verb}: {}", items.join(", "));
        note.truncate(1000);
        ctx.event(db, EventType::Normal, reason, note).await;
    }
}
