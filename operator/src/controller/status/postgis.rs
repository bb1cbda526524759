//! The `PostGISReady` condition, from the last check of the application database.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::conditions::{condition, Reason, Type};
use crate::api::PostgisStatus;

/// What the condition says (pure): status, reason, message.
pub fn assess(checked: Option<&PostgisStatus>) -> (bool, Reason, String) {
    let Some(s) = checked else {
        return (
            false,
            Reason::NotChecked,
            "the primary's application database has not been checked yet".to_owned(),
        );
    };
    if !s.unavailable.is_empty() {
        return (
            false,
            Reason::ExtensionUnavailable,
            format!(
                "postgis.extensions: the image has no {} (pg_available_extensions); the others are kept",
                s.unavailable.join(", ")
            ),
        );
    }
    match (&s.problem, &s.full_version) {
        (Some(problem), _) => (false, Reason::ExtensionFailed, problem.clone()),
        (None, Some(version)) if s.ready => {
            let kept: Vec<String> = s
                .extensions
                .iter()
                .map(|e| format!("{} {}", e.name, e.version))
                .collect();
            (
                true,
                Reason::PostGISVerified,
                format!("{} ({})", kept.join(", "), version),
            )
        }
        _ => (
            false,
            Reason::NotChecked,
            "the primary's application database has not been checked yet".to_owned(),
        ),
    }
}

pub fn condition_for(
    previous: &[Condition],
    checked: Option<&PostgisStatus>,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let (status, reason, message) = assess(checked);
    condition(
        previous,
        Type::PostGISReady,
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
    use crate::api::ExtensionStatus;

    #[test]
    fn unavailable_names_the_field_and_the_extension() {
        let s = PostgisStatus {
            unavailable: vec!["no_such_ext".into()],
            ..PostgisStatus::default()
        };
        let (ok, reason, message) = assess(Some(&s));
        assert!(!ok);
        assert_eq!(reason, Reason::ExtensionUnavailable);
        assert!(message.contains("postgis.extensions") && message.contains("no_such_ext"));
    }

    #[test]
    fn ready_only_from_a_real_answer() {
        assert_eq!(assess(None).1, Reason::NotChecked);
        let s = PostgisStatus {
            full_version: Some("POSTGIS=\"3.5.2\"".into()),
            extensions: vec![ExtensionStatus {
                name: "postgis".into(),
                version: "3.5.2".into(),
            }],
            ready: true,
            ..PostgisStatus::default()
        };
        let (ok, reason, message) = assess(Some(&s));
        assert!(ok, "{message}");
        assert_eq!(reason, Reason::PostGISVerified);
        assert!(message.contains("postgis 3.5.2"));
    }
}
