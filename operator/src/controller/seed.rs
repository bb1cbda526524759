//! Seed step: the digest of `spec.seed` names the Job that loads the demo rows
//! (`builders::seed`); it starts once the cluster is steady and the migrations (when the
//! spec has them) succeeded, runs once per digest, and its pod's termination message says
//! what it loaded (`status.seed`, Events).

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde::Deserialize;

use super::migrations::{tell_run, Run};
use super::read::Observed;
use super::replication::plan::Plan;
use super::Context;
use crate::api::{GeoDatabase, MigrationOutcome, SeedSpec, SeedStatus};
use crate::builders::{content_hash, Cluster};

/// The digest of the settings (pure).
pub fn digest(spec: &SeedSpec) -> String {
    content_hash(&[&serde_json::to_vec(spec).unwrap_or_default()])
}

/// Sets `cluster.seed` when the Job of the current settings runs already or may start:
/// a confirmed writable primary, the migrations' last run succeeded (with
/// `spec.migrations`), and no finished run of these settings.
pub fn gate(
    cluster: &mut Cluster,
    db: &GeoDatabase,
    observed: &Observed,
    health: &crate::postgres::probe::ClusterHealth,
    plan: &Plan,
) {
    let Some(spec) = db.spec.seed.as_ref() else {
        return;
    };
    let hash = digest(spec);
    let job = cluster.names.seed_job(&hash);
    let exists = observed.owned.jobs.iter().any(|j| j.name_any() == job);
    // Read in place: this runs on every reconcile.
    let unset = crate::api::GeoDatabaseStatus::default();
    let status = db.status.as_ref().unwrap_or(&unset);
    let done = status
        .seed
        .as_ref()
        .is_some_and(|s| s.hash == hash && s.outcome != MigrationOutcome::Running);
    let schema_ready = db.spec.migrations.is_none()
        || status
            .migrations
            .as_ref()
            .is_some_and(|m| m.outcome == MigrationOutcome::Succeeded);
    let may_start = schema_ready && super::chores::may_start_job(cluster, status, health, plan);
    if exists || (may_start && !done) {
        cluster.seed = Some(hash);
    }
}

/// What `geodb seed` wrote as its termination message.
#[derive(Deserialize, Default)]
struct Reported {
    locations: Option<u64>,
    images: Option<u64>,
    moderation_logs: Option<u64>,
    seconds: Option<f64>,
    error: Option<String>,
}

/// How the run of `job` stands (pure); `None` while it has not started.
pub fn status_of(hash: &str, job: Option<&Job>, pod: Option<&Pod>) -> Option<SeedStatus> {
    let job = job?;
    let (outcome, failed_condition) = super::migrations::job_outcome(job);
    let message = pod.and_then(super::migrations::terminated_message);
    let reported = message
        .as_deref()
        .and_then(|m| m.lines().last())
        .and_then(|line| serde_json::from_str::<Reported>(line).ok())
        .unwrap_or_default();
    let error = match outcome {
        MigrationOutcome::Failed => Some(
            reported
                .error
                .or(message)
                .or(failed_condition)
                .unwrap_or_else(|| "the seed Job failed".to_owned()),
        ),
        _ => None,
    };
    let succeeded = outcome == MigrationOutcome::Succeeded;
    Some(SeedStatus {
        hash: hash.to_owned(),
        job: job.name_any(),
        outcome,
        locations: reported.locations.filter(|_| succeeded),
        images: reported.images.filter(|_| succeeded),
        moderation_logs: reported.moderation_logs.filter(|_| succeeded),
        seconds: reported.seconds.filter(|_| succeeded),
        error,
    })
}

/// The run of the current settings, from its Job and pod; what was recorded of it when
/// the Job is gone.
pub fn observe(db: &GeoDatabase, cluster: &Cluster, observed: &Observed) -> Option<SeedStatus> {
    let hash = digest(db.spec.seed.as_ref()?);
    let name = cluster.names.seed_job(&hash);
    let job = observed.owned.jobs.iter().find(|j| j.name_any() == name);
    let pod = observed
        .related
        .pods
        .iter()
        .find(|p| p.labels().get("job-name") == Some(&name));
    status_of(&hash, job, pod).or_else(|| {
        db.status
            .as_ref()
            .and_then(|s| s.seed.clone())
            .filter(|s| s.hash == hash)
    })
}

/// An Event when a run starts, succeeds or fails (once each).
pub async fn tell(ctx: &Context, db: &GeoDatabase, now: Option<&SeedStatus>) {
    let Some(now) = now else {
        return;
    };
    let before = db.status.as_ref().and_then(|s| s.seed.as_ref());
    let run = Run {
        kind: "Seed",
        job: &now.job,
        before: before.map(|b| (b.hash.as_str(), b.outcome)),
        now: (&now.hash, now.outcome),
    };
    tell_run(ctx, db, run, loaded_note(now), now.error.as_deref()).await;
}

/// What a finished run loaded, in words (pure).
pub fn loaded_note(s: &SeedStatus) -> String {
    format!(
        "{}: loaded {} locations, {} images and {} moderation logs in {:.1}s",
        s.job,
        s.locations.unwrap_or_default(),
        s.images.unwrap_or_default(),
        s.moderation_logs.unwrap_or_default(),
        s.seconds.unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(status: serde_json::Value) -> Job {
        serde_json::from_value(json!({"metadata": {"name": "geo-seed-abc"}, "status": status}))
            .unwrap()
    }

    fn pod(message: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "labels": {"job-name": "geo-seed-abc"}},
            "status": {"containerStatuses": [{"name": "seed", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                "state": {"terminated": {"exitCode": 0, "message": message}}}]}}))
        .unwrap()
    }

    #[test]
    fn a_run_reads_what_it_loaded_or_why_it_failed() {
        assert!(status_of("abc", None, None).is_none());
        let running = status_of("abc", Some(&job(json!({"active": 1}))), None).unwrap();
        assert_eq!(running.outcome, MigrationOutcome::Running);
        let ok = pod(
            r#"{"locations":5000,"images":5012,"moderation_logs":2460,"seconds":0.8,"locations_per_second":6250}"#,
        );
        let done = status_of("abc", Some(&job(json!({"succeeded": 1}))), Some(&ok)).unwrap();
        assert_eq!(done.outcome, MigrationOutcome::Succeeded);
        assert_eq!(done.locations, Some(5000));
        assert_eq!(
            loaded_note(&done),
            "geo-seed-abc: loaded 5000 locations, 5012 images and 2460 moderation logs in 0.8s"
        );
        let bad = pod(r#"{"error":"table locations has no id sequence"}"#);
        let failed = status_of("abc", Some(&job(json!({"failed": 1}))), Some(&bad)).unwrap();
        assert_eq!(failed.outcome, MigrationOutcome::Failed);
        assert_eq!(
            failed.error.as_deref(),
            Some("table locations has no id sequence")
        );
        assert_eq!(failed.locations, None);
        // Stopped at its deadline: no message, the Job's condition says why.
        let late = job(
            json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True",
            "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}]}),
        );
        let failed = status_of("abc", Some(&late), None).unwrap();
        assert!(failed.error.unwrap().contains("deadline"));
    }

    #[test]
    fn the_digest_follows_the_settings() {
        let a: SeedSpec = serde_json::from_value(json!({"locations": 1000})).unwrap();
        let b: SeedSpec = serde_json::from_value(json!({"locations": 2000})).unwrap();
        assert_ne!(digest(&a), digest(&b));
        assert_eq!(digest(&a), digest(&a.clone()));
    }
}
