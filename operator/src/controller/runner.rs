//! The kube-runtime Controller: GeoDatabases and everything they own are watched, the
//! health monitor's triggers are fed in, and failures are retried with backoff.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, ResourceExt};
use tracing::warn;

use super::{owned, reconcile, Context};
use crate::api::GeoDatabase;
use crate::error::Error;

pub fn error_policy(db: Arc<GeoDatabase>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.record_error(error.metric_label());
    if matches!(error, Error::StaleView) {
        // Not a failure: the next reconcile sees the newer object.
        return Action::requeue(Duration::from_millis(200));
    }
    let delay = ctx.backoff(ObjectRef::from_obj(db.as_ref()));
    warn!(name = %db.name_any(), namespace = db.namespace().unwrap_or_default(),
        error = %error, label = error.metric_label(), retry_in_ms = delay.as_millis() as u64,
        "reconcile failed");
    Action::requeue(delay)
}

/// Watch GeoDatabases (in `namespace`, or all) and everything they own until `shutdown`.
/// Runs once per Context: it takes the writers of the Context's caches.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let writers = ctx.cache_writers.lock().ok().and_then(|mut w| w.take());
    let triggers = ctx.monitor_triggers.lock().ok().and_then(|mut t| t.take());
    let (Some(writers), Some(triggers)) = (writers, triggers) else {
        warn!("controller already running for this context");
        return;
    };
    // The health monitor asks for a reconcile when an instance changes state.
    let triggers = futures::stream::unfold(triggers, |mut triggers| async move {
        triggers.recv().await.map(|key| (key, triggers))
    });
    let client = ctx.client.clone();
    let geodatabases: Api<GeoDatabase> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let controller = Controller::new(geodatabases, watcher::Config::default());
    owned::watch_all(controller, &client, &namespace, writers)
        .reconcile_on(triggers)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile ended with an error");
            }
        })
        .await;
}
