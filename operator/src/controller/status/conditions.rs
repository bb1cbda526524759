//! Condition types and reasons (typed, so a reason is spelled one way) and the builder
//! that keeps `lastTransitionTime` while a condition holds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// A string-valued enum: one variant per value, `as_str` spells it.
macro_rules! spelled {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($(#[$vmeta])* $variant,)* }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => stringify!($variant),)* }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

spelled! {
    /// The conditions a GeoDatabase's status carries.
    Type {
        Ready,
        Progressing,
        Degraded,
        /// Failovers and switchovers: True while one is under way or refused.
        PrimaryTransition,
        /// True while an instance's volume keeps a data directory set aside after a
        /// failed rewind (never removed by geodb).
        KeptData,
        /// With `spec.backup`: True while the primary's WAL reaches the object store.
        ContinuousArchiving,
        /// True once the primary answered `postgis_full_version()` and a `geometry` cast
        /// with every extension of `spec.postgis` in place.
        PostGISReady,
        /// With `spec.migrations`: True once the run of the current inputs succeeded.
        Migrated,
    }
}

spelled! {
    /// Why a condition has its status.
    Reason {
        AllReady,
        NotReady,
        Converged,
        Reconciling,
        /// ContinuousArchiving: segments reach the object store.
        Archiving,
        /// ContinuousArchiving: the last attempt failed.
        ArchiveFailing,
        /// ContinuousArchiving: nothing archived yet.
        ArchiveWaiting,
        /// ContinuousArchiving: the primary cannot be probed.
        ArchiveUnknown,
        /// Progressing: data volumes exist without a recorded primary; the agents are
        /// asked what each holds.
        ChoosingPrimary,
        /// Pods are being restarted one at a time onto a new template.
        RollingUpdate,
        AsExpected,
        InvalidSpec,
        /// Degraded: a name the GeoDatabase needs is taken by an object it does not
        /// control (left untouched).
        NameConflict,
        /// Degraded: the API server refused an object the spec makes (invalid, forbidden
        /// or over a quota).
        ApplyRefused,
        /// Degraded: PostgreSQL refuses settings of the configuration file.
        ConfigurationRefused,
        /// Degraded: an instance's PostgreSQL refuses to start.
        InstanceFailing,
        /// Degraded: an instance whose data directory could not be rewound nor set aside
        /// again waits for a human (docs/runbooks/kept-data.md).
        InstanceParked,
        /// PrimaryTransition: nothing under way.
        Stable,
        /// The primary fails its probes, not yet for the failover delay.
        PrimaryFailing,
        /// Waiting for the old primary to stop accepting writes.
        Fencing,
        /// A new primary was chosen and is being promoted.
        Switching,
        /// The last transition completed.
        Completed,
        /// A failover is needed and no replica can be promoted.
        NoCandidate,
        /// A failover is needed and every candidate is too far behind.
        ReplicasLagging,
        /// The operator cannot reach the primary, but replicas still stream from it.
        ReplicasStillStreaming,
        /// Synchronous mode: a replica that may hold acknowledged commits is out of reach.
        SynchronousReplicaUnreachable,
        SwitchoverTargetMissing,
        PrimaryUnavailable,
        SwitchoverTargetNotReady,
        SwitchoverTargetNotStreaming,
        SwitchoverTargetLagging,
        /// KeptData: a volume keeps a former data directory.
        DataKept,
        /// KeptData: no volume keeps one.
        NoKeptData,
        /// PostGISReady: every extension in place, PostGIS answered.
        PostGISVerified,
        /// PostGISReady: the image lacks an extension of `spec.postgis`.
        ExtensionUnavailable,
        /// PostGISReady: creating, updating or checking an extension failed.
        ExtensionFailed,
        /// PostGISReady: the primary has not been checked yet.
        NotChecked,
        /// Migrated: the run of the current inputs succeeded.
        MigrationsApplied,
        MigrationRunning,
        /// Migrated: the run failed; the error names the file.
        MigrationFailed,
        /// Migrated: the run waits for a confirmed primary.
        MigrationPending,
    }
}

/// What a failover or switchover step says about the `PrimaryTransition` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransitionState {
    /// True while a transition is under way or refused.
    pub active: bool,
    pub reason: Reason,
    pub message: String,
}

pub fn now() -> Time {
    Time(Timestamp::now())
}

/// A condition; `last_transition_time` is kept from `previous` when the status did not flip.
pub fn condition(
    previous: &[Condition],
    type_: Type,
    status: bool,
    reason: Reason,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_.as_str() && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.as_str().to_owned(),
        status: status.to_owned(),
        reason: reason.as_str().to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// The condition is present and True.
pub fn is_true(condition: Option<&Condition>) -> bool {
    condition.is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_spelled_as_named() {
        assert_eq!(
            Reason::SwitchoverTargetLagging.as_str(),
            "SwitchoverTargetLagging"
        );
        assert_eq!(Type::PrimaryTransition.to_string(), "PrimaryTransition");
    }

    #[test]
    fn transition_time_moves_only_on_a_flip() {
        let at = |s| Time(Timestamp::from_second(s).unwrap());
        let first = condition(
            &[],
            Type::Ready,
            true,
            Reason::AllReady,
            "x".into(),
            None,
            &at(10),
        );
        let held = condition(
            std::slice::from_ref(&first),
            Type::Ready,
            true,
            Reason::AllReady,
            "y".into(),
            None,
            &at(20),
        );
        assert_eq!(held.last_transition_time, at(10));
        let flipped = condition(
            &[first],
            Type::Ready,
            false,
            Reason::NotReady,
            "z".into(),
            None,
            &at(30),
        );
        assert_eq!(flipped.last_transition_time, at(30));
    }
}
