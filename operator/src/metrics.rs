//! Operator metrics (Prometheus, base units).

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
}

pub struct Metrics {
    pub reconciliations: Counter,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub kube_requests: Family<MethodLabels, Counter>,
    pub actions: Family<ActionLabels, Counter>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Arc<Self> {
        let metrics = Arc::new(Self {
            reconciliations: Counter::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            kube_requests: Family::default(),
            actions: Family::default(),
        });
        registry.register(
            "geodb_reconciliations",
            "GeoDatabase reconciliations started",
            metrics.reconciliations.clone(),
        );
        registry.register(
            "geodb_reconcile_errors",
            "Failed reconciliations by error",
            metrics.reconcile_errors.clone(),
        );
        registry.register(
            "geodb_reconcile_duration_seconds",
            "Duration of one reconciliation",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "geodb_kube_api_requests",
            "Requests the operator sent to the Kubernetes API, by HTTP method",
            metrics.kube_requests.clone(),
        );
        registry.register(
            "geodb_actions",
            "Changes the operator made, by action",
            metrics.actions.clone(),
        );
        metrics
    }

    pub fn record_error(&self, label: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                error: label.to_owned(),
            })
            .inc();
    }

    pub fn record_action(&self, action: &str) {
        self.actions
            .get_or_create(&ActionLabels {
                action: action.to_owned(),
            })
            .inc();
    }

    /// Requests that change state (anything but GET), sent so far.
    pub fn kube_writes(&self) -> u64 {
        ["POST", "PUT", "PATCH", "DELETE"]
            .iter()
            .map(|m| {
                self.kube_requests
                    .get_or_create(&MethodLabels {
                        method: (*m).to_owned(),
                    })
                    .get()
            })
            .sum()
    }
}
