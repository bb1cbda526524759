//! Carrying out a failover or switchover plan. Every status field a step commits is
//! written at once (with the resourceVersion it was decided from) and mirrored into the
//! reconcile's copy of the GeoDatabase, so the rest of the reconcile sees it.

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use tracing::{info, warn};

use super::plan::{Plan, Transition};
use crate::api::{FailoverKind, FailoverRecord, GeoDatabase, GeoDatabaseStatus};
use crate::controller::apply::poolers;
use crate::controller::status::conditions::{now, Reason, TransitionState, Type};
use crate::controller::status::store;
use crate::controller::Context;
use crate::error::{Error, Result};
use crate::postgres::admin::{checkpoint, promote};
use crate::postgres::lsn;
use crate::postgres::probe::ClusterHealth;
use crate::postgres::Login;
use crate::runtime::metrics::TransitionLabels;

fn state(active: bool, reason: Reason, message: String) -> Option<TransitionState> {
    Some(TransitionState {
        active,
        reason,
        message,
    })
}

/// The pooler pods a switchover pauses, and the lookup role's password their control
/// endpoint's token is derived from (only when a pause is asked for).
pub struct Poolers<'a> {
    pub pods: &'a [Pod],
    pub password: &'a str,
}

/// Carry out `plan`; what it means for the `PrimaryTransition` condition.
pub async fn execute(
    ctx: &Context,
    db: &mut GeoDatabase,
    plan: &Plan,
    health: &ClusterHealth,
    login: &Login,
    poolers: &Poolers<'_>,
) -> Result<Option<TransitionState>> {
    match plan {
        Plan::Steady => Ok(None),
        Plan::Watch { message } => Ok(state(true, Reason::PrimaryFailing, message.clone())),
        Plan::AwaitFence { message, .. } => Ok(state(true, Reason::Fencing, message.clone())),
        Plan::AwaitTarget { message } => Ok(state(true, Reason::Switching, message.clone())),
        Plan::Acknowledge { request } => {
            commit(ctx, db, |s| s.handled_primary_request = request.clone()).await?;
            Ok(None)
        }
        Plan::RejectSwitchover {
            request,
            reason,
            message,
        } => {
            commit(ctx, db, |s| {
                s.handled_primary_request = Some(request.clone())
            })
            .await?;
            warn!(%message, "switchover refused");
            ctx.metrics.record_action("switchover_refused");
            ctx.event(db, EventType::Warning, reason.as_str(), message.clone())
                .await;
            Ok(state(false, *reason, message.clone()))
        }
        Plan::Refuse { reason, message } => {
            refuse(ctx, db, *reason, message).await;
            Ok(state(true, *reason, message.clone()))
        }
        Plan::Begin(transition) => {
            if transition.kind == FailoverKind::Switchover {
                let from = &transition.from;
                // Before the pause, not during it: the dirty pages are written while
                // clients still run.
                if let Err(error) = checkpoint(from, health.address(from), login).await {
                    warn!(instance = %from, %error, "checkpoint before the switchover failed; switching over anyway");
                }
                pause_poolers(ctx, db, poolers).await;
            }
            begin(ctx, db, transition).await
        }
        Plan::Promote { to } => {
            let after = promote(to, health.address(to), login)
                .await
                .map_err(|source| Error::Postgres {
                    instance: to.clone(),
                    action: "promoting",
                    source,
                })?;
            info!(instance = %to, "promoted");
            ctx.event(db, EventType::Normal, "Promoted", format!("promoted {to}"))
                .await;
            checkpoint_after_promotion(to, health.address(to), login);
            // Seen out of recovery on the promoting connection: the transition completes
            // now, and the labels move in this same reconcile (the next probe is up to
            // a second away, and a paused pooler waits on it).
            match after.in_recovery {
                false => complete(ctx, db, to, after.timeline).await,
                true => Ok(state(true, Reason::Switching, format!("promoting {to}"))),
            }
        }
        Plan::Complete { to, timeline } => complete(ctx, db, to, *timeline).await,
    }
}

/// PostgreSQL follows a promotion with a spread checkpoint, which may take minutes.
/// Until one completes on the new timeline, the last checkpoint the old primary shares
/// with it is older, and the old primary may already have recycled the WAL that
/// `pg_rewind` must read back to it. So an immediate one is asked for, in the background
/// (nothing waits on it).
fn checkpoint_after_promotion(to: &str, address: &str, login: &Login) {
    let (instance, address, login) = (to.to_owned(), address.to_owned(), login.clone());
    tokio::spawn(async move {
        match checkpoint(&instance, &address, &login).await {
            Ok(()) => info!(%instance, "checkpoint after the promotion"),
            Err(error) => warn!(%instance, %error, "checkpoint after the promotion failed"),
        }
    });
}

/// Before a planned switchover: the read-write poolers hold new transactions (clients
/// wait, they see no error) until the labels move to the new primary, which resumes them.
async fn pause_poolers(ctx: &Context, db: &GeoDatabase, to_pause: &Poolers<'_>) {
    let token = crate::pooler::control::token(to_pause.password);
    let (paused, of) = poolers::pause(to_pause.pods, &token).await;
    if of == 0 {
        return;
    }
    let (kind, message) = match paused == of {
        true => (EventType::Normal, format!("paused {of} read-write pooler pod(s) for the switchover")),
        false => (
            EventType::Warning,
            format!(
                "paused {paused} of {of} read-write pooler pod(s); clients of the others may see errors during the switchover"
            ),
        ),
    };
    info!(paused, of, "poolers paused for the switchover");
    ctx.event(db, kind, "PoolersPaused", message).await;
}

/// One Event per refusal reason, not one per retry.
async fn refuse(ctx: &Context, db: &GeoDatabase, reason: Reason, message: &str) {
    let was = db
        .status
        .as_ref()
        .and_then(|s| s.condition(Type::PrimaryTransition.as_str()))
        .map(|c| c.reason.clone());
    if was.as_deref() == Some(reason.as_str()) {
        return;
    }
    warn!(%message, "failover refused");
    let labels = transition_labels(db, FailoverKind::Failover);
    ctx.metrics.promotions_refused.get_or_create(&labels).inc();
    ctx.event(
        db,
        EventType::Warning,
        "FailoverRefused",
        message.to_owned(),
    )
    .await;
}

fn record_of(t: &Transition) -> FailoverRecord {
    FailoverRecord {
        kind: t.kind,
        from: t.from.clone(),
        to: t.to.clone(),
        reason: t.reason.clone(),
        started_at: now().0.to_string(),
        completed_at: None,
        old_primary_lsn: t.old_lsn.map(lsn::format),
        promoted_lsn: t.promoted_lsn.map(lsn::format),
        lost_bytes: match (t.kind, t.old_lsn, t.promoted_lsn) {
            (FailoverKind::Failover, Some(old), Some(new)) => Some(lsn::distance(old, new)),
            _ => None,
        },
        timeline: None,
    }
}

/// Commit the new target primary, then tell.
async fn begin(
    ctx: &Context,
    db: &mut GeoDatabase,
    t: &Transition,
) -> Result<Option<TransitionState>> {
    let record = record_of(t);
    let lost = record.lost_bytes.filter(|lost| *lost > 0);
    commit(ctx, db, |s| {
        s.target_primary = Some(t.to.clone());
        s.last_failover = Some(record);
        s.failovers = s.failovers.saturating_add(1);
        if t.kind == FailoverKind::Switchover {
            s.handled_primary_request = Some(t.to.clone());
        }
    })
    .await?;
    if failpoint("exit-after-failover-begin") {
        // For the drill that kills the operator in the middle of a failover.
        warn!("failpoint exit-after-failover-begin: exiting");
        std::process::exit(1);
    }
    let kind = kind_word(t.kind);
    let message = format!(
        "{kind} from {} to {} started: {}{}",
        t.from,
        t.to,
        t.reason,
        lost.map(|lost| format!("; up to {lost} bytes of WAL not received by {}", t.to))
            .unwrap_or_default()
    );
    info!(from = %t.from, to = %t.to, reason = %t.reason, "{kind} started");
    ctx.metrics.record_action(&format!("{kind}_started"));
    let reason = format!("{}Started", capitalized(kind));
    ctx.event(db, EventType::Warning, &reason, message.clone())
        .await;
    Ok(state(true, Reason::Switching, message))
}

/// The target runs as the primary: record it, with how long the transition took.
async fn complete(
    ctx: &Context,
    db: &mut GeoDatabase,
    to: &str,
    timeline: Option<i64>,
) -> Result<Option<TransitionState>> {
    let mut record = db.status.as_ref().and_then(|s| s.last_failover.clone());
    let mut took = None;
    if let Some(record) = record.as_mut() {
        let finished = now().0;
        record.completed_at = Some(finished.to_string());
        record.timeline = timeline;
        took = record
            .started_at
            .parse::<k8s_openapi::jiff::Timestamp>()
            .ok()
            .map(|started| finished.duration_since(started).as_secs_f64());
    }
    let kind = record.as_ref().map_or(FailoverKind::Failover, |r| r.kind);
    commit(ctx, db, |s| {
        s.current_primary = Some(to.to_owned());
        s.timeline = timeline;
        s.last_failover = record;
    })
    .await?;
    ctx.metrics
        .transitions
        .get_or_create(&transition_labels(db, kind))
        .inc();
    if let Some(seconds) = took {
        ctx.metrics.transition_duration.observe(seconds);
    }
    let word = kind_word(kind);
    let message = format!(
        "{to} is the primary{}{}",
        timeline
            .map(|t| format!(" on timeline {t}"))
            .unwrap_or_default(),
        took.map(|s| format!(" ({word} took {s:.1}s)"))
            .unwrap_or_default()
    );
    info!(primary = %to, ?timeline, "{word} completed");
    let reason = format!("{}Completed", capitalized(word));
    ctx.event(db, EventType::Normal, &reason, message.clone())
        .await;
    Ok(state(false, Reason::Completed, message))
}

/// Change the status with `change` and store it at once, failing on a concurrent change.
async fn commit(
    ctx: &Context,
    db: &mut GeoDatabase,
    change: impl FnOnce(&mut GeoDatabaseStatus),
) -> Result<()> {
    let mut status = db.status.clone().unwrap_or_default();
    change(&mut status);
    let stored = store(&ctx.client, db, status).await?;
    db.status = stored.status;
    db.metadata.resource_version = stored.metadata.resource_version;
    Ok(())
}

/// A fault injected on purpose by the e2e drills (`GEODB_FAILPOINT`).
fn failpoint(name: &str) -> bool {
    std::env::var("GEODB_FAILPOINT").is_ok_and(|value| value == name)
}

fn kind_word(kind: FailoverKind) -> &'static str {
    match kind {
        FailoverKind::Failover => "failover",
        FailoverKind::Switchover => "switchover",
    }
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

fn transition_labels(db: &GeoDatabase, kind: FailoverKind) -> TransitionLabels {
    TransitionLabels {
        namespace: db.namespace().unwrap_or_default(),
        cluster: db.name_any(),
        kind: kind_word(kind).to_owned(),
    }
}
