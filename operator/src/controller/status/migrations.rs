//! The `Migrated` condition (with `spec.migrations`), from the run of the current inputs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::conditions::{condition, Reason, Type};
use crate::api::{MigrationOutcome, MigrationsStatus};
use crate::controller::migrations::succeeded_note;

/// What the condition says (pure), for the inputs with digest `hash`.
pub fn assess(hash: &str, run: Option<&MigrationsStatus>) -> (bool, Reason, String) {
    match run.filter(|r| r.hash == hash) {
        None => (
            false,
            Reason::MigrationPending,
            "migrations wait for a confirmed primary".to_owned(),
        ),
        Some(r) => match r.outcome {
            MigrationOutcome::Running => {
                (false, Reason::MigrationRunning, format!("{} is running", r.job))
            }
            MigrationOutcome::Succeeded => (true, Reason::MigrationsApplied, succeeded_note(r)),
            MigrationOutcome::Failed => (
                false,
                Reason::MigrationFailed,
                format!(
                    "{}: {}; the failed file was rolled back; fix it (a new ConfigMap content or spec runs again)",
                    r.job,
                    r.error.as_deref().unwrap_or("failed")
                ),
            ),
        },
    }
}

pub fn condition_for(
    previous: &[Condition],
    hash: &str,
    run: Option<&MigrationsStatus>,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let (status, reason, message) = assess(hash, run);
    condition(
        previous,
        Type::Migrated,
        status,
        reason,
        message,
        generation,
        now,
    )
}
