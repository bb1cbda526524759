//! The conditions of the database chores: `PostGISReady`, and `Migrated` with
//! `spec.migrations`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{MaintenanceStatus, MigrationsStatus, PostgisStatus, SeedStatus};

/// What the database chores found this reconcile.
#[derive(Clone, Debug, Default)]
pub struct Chores {
    /// The last check of the application database's extensions.
    pub postgis: Option<PostgisStatus>,
    /// With `spec.migrations`: the digest of its inputs and how their run stands.
    pub migrations: Option<(String, Option<MigrationsStatus>)>,
    /// The newest finished maintenance runs.
    pub maintenance: Option<MaintenanceStatus>,
    /// With `spec.seed`: how the run of its current settings stands.
    pub seed: Option<SeedStatus>,
}

/// `PostGISReady`, and `Migrated` with `spec.migrations`; the migration run to keep in
/// the status (the current inputs' once it started, else the last one).
pub fn conditions(
    conditions: &mut Vec<Condition>,
    (previous, generation, now): (&[Condition], Option<i64>, &Time),
    postgis: Option<&PostgisStatus>,
    migrations: &Option<(String, Option<MigrationsStatus>)>,
    last_run: Option<MigrationsStatus>,
) -> Option<MigrationsStatus> {
    conditions.push(super::postgis::condition_for(
        previous, postgis, generation, now,
    ));
    let Some((hash, run)) = migrations else {
        return last_run;
    };
    conditions.push(super::migrations::condition_for(
        previous,
        hash,
        run.as_ref(),
        generation,
        now,
    ));
    run.clone().or(last_run)
}
