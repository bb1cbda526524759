//! Events the agent publishes on its GeoDatabase, for what only the pod can see (a data
//! directory set aside, an instance that waits for a human).

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use tracing::warn;

use super::settings::Settings;
use crate::api::GeoDatabase;

/// Publishes Events regarding the GeoDatabase, as `geodb-instance/<pod>`.
pub struct Events {
    recorder: Recorder,
    api: Api<GeoDatabase>,
    cluster: String,
}

impl Events {
    pub fn new(client: Client, settings: &Settings) -> Self {
        let reporter = Reporter {
            controller: "geodb-instance".into(),
            instance: std::env::var(crate::pod_contract::env::POD_NAME).ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            api: Api::namespaced(client, &settings.namespace),
            cluster: settings.cluster.clone(),
        }
    }

    /// A Warning Event; a failure to publish is logged, not fatal.
    pub async fn warn(&self, reason: &str, note: String) {
        let reference = match self.api.get(&self.cluster).await {
            Ok(db) => db.object_ref(&()),
            Err(error) => {
                warn!(%error, reason, "cannot publish an event: the GeoDatabase is not readable");
                return;
            }
        };
        let event = Event {
            type_: EventType::Warning,
            reason: reason.to_owned(),
            note: Some(note),
            action: reason.to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &reference).await {
            warn!(%error, reason, "could not publish an event");
        }
    }
}
