//! Migrations step: the digest of `spec.migrations` and its ConfigMaps' contents names
//! the Job that runs them (`builders::migrations`); the Job and its pod's termination
//! message say how the run ended (`status.migrations`, Events, the `Migrated`
//! condition). A run starts only against a confirmed primary.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use serde::Deserialize;

use super::read::{MigrationSources, Observed};
use super::Context;
use crate::api::{GeoDatabase, MigrationOutcome, MigrationsSpec, MigrationsStatus};
use crate::builders::content_hash;

/// What the schema accepts but cannot run: a missing ConfigMap, one without SQL files.
pub fn problems(spec: Option<&MigrationsSpec>, sources: &MigrationSources) -> Vec<String> {
    let Some(spec) = spec.filter(|s| s.image.is_none()) else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    for (index, name) in spec.config_maps.iter().enumerate() {
        match sources.get(name) {
            Some(Some(data)) if data.keys().any(|k| k.ends_with(".sql")) => {}
            Some(Some(_)) => problems.push(format!(
                "migrations.configMaps[{index}]: ConfigMap {name} holds no .sql file (keys are named V<version>__<description>.sql)"
            )),
            _ => problems.push(format!(
                "migrations.configMaps[{index}]: ConfigMap {name} does not exist in this namespace"
            )),
        }
    }
    problems
}

/// The digest of a run's inputs: the spec and every ConfigMap's contents (pure).
pub fn digest(spec: &MigrationsSpec, sources: &MigrationSources) -> String {
    let spec_json = serde_json::to_vec(spec).unwrap_or_default();
    let mut parts: Vec<Vec<u8>> = vec![spec_json];
    for (name, data) in sources {
        parts.push(name.as_bytes().to_vec());
        for (key, value) in data.iter().flatten() {
            parts.push(key.as_bytes().to_vec());
            parts.push(value.as_bytes().to_vec());
        }
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    content_hash(&refs)
}

/// The last stdout line of `geodb migrate`, as its termination message.
#[derive(Deserialize)]
struct Reported {
    outcome: String,
    version: Option<String>,
    #[serde(default)]
    applied: Vec<String>,
    error: Option<String>,
}

pub fn terminated_message(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
}

/// How a one-shot Job stands, and its `Failed` condition's message (pure).
pub fn job_outcome(job: &Job) -> (MigrationOutcome, Option<String>) {
    let status = job.status.clone().unwrap_or_default();
    let failed = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed" && c.status == "True")
        .map(|c| c.message.clone().unwrap_or_default());
    let outcome = if status.succeeded.unwrap_or(0) > 0 {
        MigrationOutcome::Succeeded
    } else if status.failed.unwrap_or(0) > 0 || failed.is_some() {
        MigrationOutcome::Failed
    } else {
        MigrationOutcome::Running
    };
    (outcome, failed)
}

/// How the run of `job` stands (pure); `None` while it has not started.
pub fn status_of(hash: &str, job: Option<&Job>, pod: Option<&Pod>) -> Option<MigrationsStatus> {
    let job = job?;
    let (outcome, failed_condition) = job_outcome(job);
    let message = pod.and_then(terminated_message);
    let reported = message
        .as_deref()
        .and_then(|m| m.lines().last())
        .and_then(|line| serde_json::from_str::<Reported>(line).ok());
    let error = match (&outcome, &reported) {
        (MigrationOutcome::Failed, Some(r)) if r.outcome == "failed" => r.error.clone(),
        (MigrationOutcome::Failed, _) => Some(
            message
                .or(failed_condition)
                .unwrap_or_else(|| "the migration Job failed".to_owned()),
        ),
        _ => None,
    };
    Some(MigrationsStatus {
        hash: hash.to_owned(),
        job: job.name_any(),
        outcome,
        version: reported.as_ref().and_then(|r| r.version.clone()),
        applied: reported.map(|r| r.applied).unwrap_or_default(),
        error,
    })
}

/// The status of the current run, from the Job named after `hash` and its pod.
pub fn observe(
    db: &GeoDatabase,
    observed: &Observed,
    hash: &str,
    job_name: &str,
) -> Option<MigrationsStatus> {
    let job = observed
        .owned
        .jobs
        .iter()
        .find(|j| j.name_any() == job_name);
    let pod = observed
        .related
        .pods
        .iter()
        .find(|p| p.labels().get("job-name").map(String::as_str) == Some(job_name));
    status_of(hash, job, pod).or_else(|| {
        // The Job is gone (deleted by hand): keep what was seen of it.
        db.status
            .as_ref()
            .and_then(|s| s.migrations.clone())
            .filter(|m| m.hash == hash)
    })
}

/// An Event when a run starts, succeeds or fails (once each).
pub async fn tell(ctx: &Context, db: &GeoDatabase, now: Option<&MigrationsStatus>) {
    let Some(now) = now else {
        return;
    };
    let before = db.status.as_ref().and_then(|s| s.migrations.as_ref());
    let run = Run {
        kind: "Migration",
        job: &now.job,
        before: before.map(|b| (b.hash.as_str(), b.outcome)),
        now: (&now.hash, now.outcome),
    };
    tell_run(ctx, db, run, succeeded_note(now), now.error.as_deref()).await;
}

/// A one-shot Job's run as Events see it: `kind` prefixes the reasons
/// (`<kind>Started`, `<kind>Succeeded`, `<kind>Failed`).
pub struct Run<'a> {
    pub kind: &'static str,
    pub job: &'a str,
    /// The digest and outcome recorded before this reconcile.
    pub before: Option<(&'a str, MigrationOutcome)>,
    pub now: (&'a str, MigrationOutcome),
}

/// The Event of a run whose digest or outcome is new.
pub async fn tell_run(
    ctx: &Context,
    db: &GeoDatabase,
    run: Run<'_>,
    succeeded: String,
    error: Option<&str>,
) {
    if run.before == Some(run.now) {
        return;
    }
    let (kind, reason, note) = match run.now.1 {
        MigrationOutcome::Running => (EventType::Normal, "Started", format!("running {}", run.job)),
        MigrationOutcome::Succeeded => (EventType::Normal, "Succeeded", succeeded),
        MigrationOutcome::Failed => (
            EventType::Warning,
            "Failed",
            format!("{}: {}", run.job, error.unwrap_or("failed")),
        ),
    };
    ctx.event(db, kind, &format!("{}{reason}", run.kind), note)
        .await;
}

/// What a successful run did, in words.
pub fn succeeded_note(s: &MigrationsStatus) -> String {
    let version = s
        .version
        .as_deref()
        .map(|v| format!(" at version {v}"))
        .unwrap_or_default();
    match s.applied.as_slice() {
        // Image mode reports nothing of its own: its command succeeded.
        [] if s.version.is_none() => format!("{}: the migration command succeeded", s.job),
        [] => format!("{}: schema up to date{version}", s.job),
        applied => format!("{}: applied {}{version}", s.job, applied.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(status: serde_json::Value) -> Job {
        serde_json::from_value(json!({"metadata": {"name": "geo-migrate-abc"}, "status": status}))
            .unwrap()
    }

    fn pod(message: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "labels": {"job-name": "geo-migrate-abc"}},
            "status": {"containerStatuses": [{"name": "migrate", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                "state": {"terminated": {"exitCode": 1, "message": message}}}]}}))
        .unwrap()
    }

    #[test]
    fn a_run_reads_its_outcome_from_the_termination_message() {
        assert!(status_of("abc", None, None).is_none());
        let running = status_of("abc", Some(&job(json!({"active": 1}))), None).unwrap();
        assert_eq!(running.outcome, MigrationOutcome::Running);
        let ok = pod(
            r#"{"outcome":"applied","version":"5","applied":["1","2","3","4","5"],"error":null}"#,
        );
        let done = status_of("abc", Some(&job(json!({"succeeded": 1}))), Some(&ok)).unwrap();
        assert_eq!(done.outcome, MigrationOutcome::Succeeded);
        assert_eq!(done.version.as_deref(), Some("5"));
        assert!(succeeded_note(&done).contains("applied 1, 2, 3, 4, 5 at version 5"));
        let bad = pod(
            r#"{"outcome":"failed","version":"5","applied":[],"error":"V6__broken.sql: syntax error at or near \"TABLEE\""}"#,
        );
        let failed = status_of("abc", Some(&job(json!({"failed": 1}))), Some(&bad)).unwrap();
        assert_eq!(failed.outcome, MigrationOutcome::Failed);
        assert!(failed.error.unwrap().contains("V6__broken.sql"));
        // Another tool's failure: the end of its log.
        let other = pod("alembic.util.exc.CommandError: Can't locate revision");
        let failed = status_of("abc", Some(&job(json!({"failed": 1}))), Some(&other)).unwrap();
        assert!(failed.error.unwrap().contains("Can't locate revision"));
    }

    #[test]
    fn missing_or_empty_config_maps_are_named() {
        let spec: MigrationsSpec =
            serde_json::from_value(json!({"configMaps": ["a", "b", "c"]})).unwrap();
        let mut sources = MigrationSources::new();
        sources.insert(
            "a".into(),
            Some([("V1__x.sql".to_owned(), "SELECT 1".to_owned())].into()),
        );
        sources.insert("b".into(), None);
        sources.insert(
            "c".into(),
            Some([("readme".to_owned(), "".to_owned())].into()),
        );
        let found = problems(Some(&spec), &sources);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].contains("migrations.configMaps[1]") && found[0].contains("does not exist")
        );
        assert!(found[1].contains("migrations.configMaps[2]") && found[1].contains("no .sql"));
        let before = digest(&spec, &sources);
        sources.insert(
            "a".into(),
            Some([("V1__x.sql".to_owned(), "SELECT 2".to_owned())].into()),
        );
        assert_ne!(
            digest(&spec, &sources),
            before,
            "a changed file is a new run"
        );
    }
}
