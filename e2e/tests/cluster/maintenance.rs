//! The VACUUM schedule: a run on demand (annotation) and one from the CronJob bring the
//! dead tuples of the sample schema's `locations` down, report them per table in the
//! status, set the per-table autovacuum settings, and skip a table the application
//! keeps locked instead of queueing behind it.

use std::time::Duration;

use geodb::api::{GeoDatabase, VacuumRun};
use geodb_e2e::conn::{connect, connection_for};
use geodb_e2e::kube_util::wait_for;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};

/// `status.maintenance.lastVacuum` once `accept` takes it.
async fn last_vacuum(
    api: &Api<GeoDatabase>,
    what: &str,
    accept: impl Fn(&VacuumRun) -> bool,
) -> VacuumRun {
    let seen = std::sync::Mutex::new(None);
    wait_for(what, Duration::from_secs(180), || async {
        let run = api
            .get("geo")
            .await
            .ok()?
            .status?
            .maintenance?
            .last_vacuum?;
        *seen.lock().unwrap() = Some(run.clone());
        accept(&run).then_some(run)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; last seen: {:?}", seen.lock().unwrap()))
}

fn table<'a>(run: &'a VacuumRun, name: &str) -> &'a geodb::api::VacuumTable {
    run.tables
        .iter()
        .find(|t| t.table == name)
        .unwrap_or_else(|| panic!("{name} not in {run:?}"))
}

pub async fn scenario_vacuum(client: &Client, ns: &str) {
    let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    let rw = connect(&connection_for(client, ns, "geo-app-rw", "geo-rw").await).await;
    rw.batch_execute(
        "ALTER TABLE locations SET (autovacuum_enabled = false);
         INSERT INTO locations (name, category, owner, geom)
           SELECT 'p' || g, 'cafe', 'e2e', ST_SetSRID(ST_MakePoint(106.7, 10.8), 4326)
             FROM generate_series(1, 3000) g;
         DELETE FROM locations WHERE owner = 'e2e' AND id % 3 <> 0;",
    )
    .await
    .unwrap();
    wait_for("dead tuples counted", Duration::from_secs(30), || async {
        let dead: i64 = rw
            .query_one(
                "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'locations'",
                &[],
            )
            .await
            .ok()?
            .get(0);
        (dead >= 2000).then_some(())
    })
    .await
    .unwrap();

    let spec = serde_json::json!({
        "metadata": {"annotations": {"geodb.io/vacuum-request": "e2e-1"}},
        "spec": {"maintenance": {"vacuum": {"schedule": "0 3 * * *",
            "tables": ["locations", "images"], "lockTimeoutSeconds": 2,
            "autovacuum": {"locations": {"autovacuum_vacuum_scale_factor": "0.05"}}}}}});
    api.patch("geo", &PatchParams::default(), &Patch::Merge(&spec))
        .await
        .unwrap();
    let run = last_vacuum(&api, "a VACUUM run that found the dead tuples", |r| {
        r.tables
            .iter()
            .any(|t| t.table == "locations" && t.dead_before >= 2000)
    })
    .await;
    assert_eq!(run.outcome, "vacuumed", "{run:?}");
    let locations = table(&run, "locations");
    assert_eq!(locations.dead_after, 0, "{run:?}");
    let options: Vec<String> = rw
        .query_one(
            "SELECT coalesce(reloptions, '{}') FROM pg_class WHERE relname = 'locations'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        options.contains(&"autovacuum_vacuum_scale_factor=0.05".to_owned()),
        "{options:?}"
    );

    // On schedule: a Job of the CronJob completes.
    let every_minute =
        serde_json::json!({"spec": {"maintenance": {"vacuum": {"schedule": "* * * * *"}}}});
    api.patch("geo", &PatchParams::default(), &Patch::Merge(&every_minute))
        .await
        .unwrap();
    let jobs = Api::<Job>::namespaced(client.clone(), ns);
    wait_for(
        "a scheduled VACUUM run",
        Duration::from_secs(150),
        || async {
            let list = jobs
                .list(&ListParams::default().labels("app.kubernetes.io/component=vacuum"))
                .await
                .ok()?;
            list.items
                .iter()
                .any(|j| {
                    j.metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|o| o.kind == "CronJob")
                        && j.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) > 0
                })
                .then_some(())
        },
    )
    .await
    .unwrap();

    // A table the application keeps locked is skipped, not waited for.
    let holder = connect(&connection_for(client, ns, "geo-app-rw", "geo-rw").await).await;
    holder
        .batch_execute("BEGIN; LOCK TABLE images IN ACCESS EXCLUSIVE MODE;")
        .await
        .unwrap();
    let request = serde_json::json!({
        "metadata": {"annotations": {"geodb.io/vacuum-request": "e2e-2"}},
        "spec": {"maintenance": {"vacuum": {"schedule": "0 3 * * *"}}}});
    api.patch("geo", &PatchParams::default(), &Patch::Merge(&request))
        .await
        .unwrap();
    let run = last_vacuum(&api, "a VACUUM run while images is locked", |r| {
        r.tables
            .iter()
            .any(|t| t.table == "images" && t.outcome == "skipped")
    })
    .await;
    assert_eq!(run.outcome, "partial", "{run:?}");
    assert_eq!(table(&run, "locations").outcome, "vacuumed");
    holder.batch_execute("ROLLBACK").await.unwrap();
}
