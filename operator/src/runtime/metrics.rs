//! Operator metrics (Prometheus, base units).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub namespace: String,
    pub cluster: String,
    pub instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub namespace: String,
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub namespace: String,
    pub cluster: String,
    /// `failover` or `switchover`.
    pub kind: String,
}

pub struct Metrics {
    pub reconciliations: Counter,
    pub instance_up: Family<InstanceLabels, Gauge>,
    pub instance_is_primary: Family<InstanceLabels, Gauge>,
    pub instance_timeline: Family<InstanceLabels, Gauge>,
    pub replica_lag_bytes: Family<InstanceLabels, Gauge>,
    pub replica_lag_seconds: Family<InstanceLabels, Gauge<f64, AtomicU64>>,
    pub archive_failures: Family<InstanceLabels, Gauge>,
    pub archive_waiting_segments: Family<InstanceLabels, Gauge>,
    pub archive_last_success_age_seconds: Family<InstanceLabels, Gauge<f64, AtomicU64>>,
    pub backups: Family<ClusterLabels, Gauge>,
    pub backup_last_completion_timestamp_seconds: Family<ClusterLabels, Gauge>,
    pub backup_stored_bytes: Family<ClusterLabels, Gauge>,
    pub dump_last_completion_timestamp_seconds: Family<ClusterLabels, Gauge>,
    pub transitions: Family<TransitionLabels, Counter>,
    pub transition_duration: Histogram,
    pub promotions_refused: Family<TransitionLabels, Counter>,
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
            instance_up: Family::default(),
            instance_is_primary: Family::default(),
            instance_timeline: Family::default(),
            replica_lag_bytes: Family::default(),
            replica_lag_seconds: Family::default(),
            archive_failures: Family::default(),
            archive_waiting_segments: Family::default(),
            archive_last_success_age_seconds: Family::default(),
            backups: Family::default(),
            backup_last_completion_timestamp_seconds: Family::default(),
            backup_stored_bytes: Family::default(),
            dump_last_completion_timestamp_seconds: Family::default(),
            transitions: Family::default(),
            transition_duration: Histogram::new(exponential_buckets(0.25, 2.0, 10)),
            promotions_refused: Family::default(),
        });
        metrics.register_instance_metrics(registry);
        metrics.register_backup_metrics(registry);
        metrics.register_operator_metrics(registry);
        metrics
    }

    /// The WAL archive (from the primary's `pg_stat_archiver`) and the base backups (from
    /// the bucket).
    fn register_backup_metrics(&self, registry: &mut Registry) {
        registry.register(
            "geodb_wal_archive_failures",
            "Failed archive_command runs on the primary since its statistics were reset",
            self.archive_failures.clone(),
        );
        registry.register(
            "geodb_wal_archive_waiting_segments",
            "WAL files the primary keeps until they are archived",
            self.archive_waiting_segments.clone(),
        );
        registry.register(
            "geodb_wal_archive_last_success_age_seconds",
            "Time since the primary last archived a WAL file",
            self.archive_last_success_age_seconds.clone(),
        );
        registry.register(
            "geodb_backups",
            "Complete base backups in the bucket",
            self.backups.clone(),
        );
        registry.register(
            "geodb_backup_last_completion_timestamp_seconds",
            "When the newest complete base backup finished (Unix time)",
            self.backup_last_completion_timestamp_seconds.clone(),
        );
        registry.register(
            "geodb_backup_stored_bytes",
            "Bytes the complete base backups take in the bucket",
            self.backup_stored_bytes.clone(),
        );
        registry.register(
            "geodb_dump_last_completion_timestamp_seconds",
            "When the newest complete logical dump finished (Unix time)",
            self.dump_last_completion_timestamp_seconds.clone(),
        );
    }

    /// What the operator measures of every instance.
    fn register_instance_metrics(&self, registry: &mut Registry) {
        registry.register(
            "geodb_instance_up",
            "1 when the instance's PostgreSQL answered the operator's last probe",
            self.instance_up.clone(),
        );
        registry.register(
            "geodb_instance_is_primary",
            "1 when the instance runs as a primary (not in recovery)",
            self.instance_is_primary.clone(),
        );
        registry.register(
            "geodb_instance_timeline",
            "PostgreSQL timeline of the instance",
            self.instance_timeline.clone(),
        );
        registry.register(
            "geodb_replica_lag_bytes",
            "WAL bytes between the primary's position and the replica's replayed position",
            self.replica_lag_bytes.clone(),
        );
        registry.register(
            "geodb_replica_lag_seconds",
            "Age of the last replayed transaction while the replica has WAL to replay",
            self.replica_lag_seconds.clone(),
        );
        registry.register(
            "geodb_primary_transitions",
            "Completed failovers and switchovers",
            self.transitions.clone(),
        );
        registry.register(
            "geodb_primary_transition_duration_seconds",
            "Time from the start of a failover or switchover to the promoted primary",
            self.transition_duration.clone(),
        );
        registry.register(
            "geodb_promotions_refused",
            "Failovers the operator refused to make, once per refusal reason",
            self.promotions_refused.clone(),
        );
    }

    /// The operator's own work.
    fn register_operator_metrics(&self, registry: &mut Registry) {
        registry.register(
            "geodb_reconciliations",
            "GeoDatabase reconciliations started",
            self.reconciliations.clone(),
        );
        registry.register(
            "geodb_reconcile_errors",
            "Failed reconciliations by error",
            self.reconcile_errors.clone(),
        );
        registry.register(
            "geodb_reconcile_duration_seconds",
            "Duration of one reconciliation",
            self.reconcile_duration.clone(),
        );
        registry.register(
            "geodb_kube_api_requests",
            "Requests the operator sent to the Kubernetes API, by HTTP method",
            self.kube_requests.clone(),
        );
        registry.register(
            "geodb_actions",
            "Changes the operator made, by action",
            self.actions.clone(),
        );
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

    /// Drop the series of an instance that no longer exists.
    pub fn forget_instance(&self, labels: &InstanceLabels) {
        self.instance_up.remove(labels);
        self.instance_is_primary.remove(labels);
        self.instance_timeline.remove(labels);
        self.replica_lag_bytes.remove(labels);
        self.replica_lag_seconds.remove(labels);
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
