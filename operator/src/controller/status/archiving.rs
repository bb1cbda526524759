//! The `ContinuousArchiving` condition (with `spec.backup`): whether the primary's WAL
//! reaches the object store, from its `pg_stat_archiver` and the last error of
//! `geodb wal-push`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::conditions::{condition, Reason, Type};
use crate::postgres::probe::Archiver;

/// What the condition says (pure): status, reason, message.
pub fn assess(archiver: Option<&Archiver>) -> (bool, Reason, String) {
    let Some(a) = archiver else {
        return (
            false,
            Reason::ArchiveUnknown,
            "the primary cannot be probed: archiving state unknown".to_owned(),
        );
    };
    let failing_now = match (a.failed_age, a.archived_age) {
        (Some(failed), Some(archived)) => failed < archived,
        (Some(_), None) => true,
        _ => false,
    };
    if failing_now {
        let segment = a.last_failed_wal.as_deref().unwrap_or("a segment");
        let error = a
            .last_error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        return (false, Reason::ArchiveFailing, format!(
            "archiving {segment} fails ({} failures so far, the last {:.0}s ago){error}; {} segments wait on the primary, which keeps them until they are archived",
            a.failed_count,
            a.failed_age.unwrap_or_default(),
            a.waiting
        ));
    }
    match (&a.last_archived_wal, a.archived_age) {
        (Some(segment), Some(age)) => (
            true,
            Reason::Archiving,
            format!(
                "last archived {segment} {age:.0}s ago; {} segments waiting",
                a.waiting
            ),
        ),
        _ => (
            false,
            Reason::ArchiveWaiting,
            "no segment archived yet".to_owned(),
        ),
    }
}

/// The condition, when the spec asks for archiving.
pub fn condition_for(
    previous: &[Condition],
    archiver: Option<&Archiver>,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let (status, reason, message) = assess(archiver);
    condition(
        previous,
        Type::ContinuousArchiving,
        status,
        reason,
        message,
        generation,
        now,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_after_the_last_success_is_failing_with_the_error() {
        let a = Archiver {
            last_archived_wal: Some("000000010000000000000003".into()),
            archived_age: Some(120.0),
            last_failed_wal: Some("000000010000000000000004".into()),
            failed_age: Some(2.0),
            failed_count: 7,
            waiting: 3,
            last_error: Some("wal-push: connecting to https://s3:9443: connection refused".into()),
        };
        let (ok, reason, message) = assess(Some(&a));
        assert!(!ok);
        assert_eq!(reason, Reason::ArchiveFailing);
        assert!(
            message.contains("000000010000000000000004")
                && message.contains("connection refused")
                && message.contains("3 segments wait")
        );
        let recovered = Archiver {
            archived_age: Some(1.0),
            ..a
        };
        let (ok, reason, _) = assess(Some(&recovered));
        assert!(ok);
        assert_eq!(reason, Reason::Archiving);
    }

    #[test]
    fn nothing_yet_or_no_primary_is_not_true() {
        assert_eq!(assess(Some(&Archiver::default())).1, Reason::ArchiveWaiting);
        assert_eq!(assess(None).1, Reason::ArchiveUnknown);
    }
}
