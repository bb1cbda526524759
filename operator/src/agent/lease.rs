//! The primary's right to take writes: the Lease `<cluster>-primary`, held by the
//! instance that runs as the primary and renewed every second through the API server.
//! A primary that has not renewed it for half the lease stops taking writes by itself
//! (an immediate shutdown); the operator promotes another instance only once the Lease
//! was released or has not been renewed for the whole lease, as it observes it. So a
//! primary cut off from the API server is down before anything else is promoted, under
//! any partition, and never on elapsed time alone.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};
use tracing::{info, warn};

use super::settings::Settings;
use crate::names::Names;

/// How often the Lease is renewed, and the bound of one renewal.
const RENEW_EVERY: Duration = Duration::from_secs(1);
const RENEW_TIMEOUT: Duration = Duration::from_millis(700);

/// What the keeper knows, shared with the supervisor.
#[derive(Clone, Copy, Debug, Default)]
pub struct LeaseState {
    /// When the last successful renewal was sent.
    pub renewed_at: Option<Instant>,
    /// Another instance holds the Lease.
    pub held_by_other: bool,
}

/// What the supervisor asks of the keeper.
#[derive(Clone, Copy, Debug, Default)]
pub struct Wanted {
    /// This instance runs as the primary: hold the Lease.
    pub hold: bool,
    /// The operator made this instance the primary: take the Lease even if another
    /// instance's record is there (the operator waited for it to expire first).
    pub take_over: bool,
    pub duration: Duration,
}

/// The keeper of one instance's claim on the primary Lease.
#[derive(Clone)]
pub struct PrimaryLease {
    api: Api<Lease>,
    name: String,
    identity: String,
    pub state: Arc<Mutex<LeaseState>>,
    pub wanted: Arc<Mutex<Wanted>>,
}

/// Whether `spec` leaves the Lease free for `identity` now: unheld, its own, expired, or
/// `take_over`.
pub fn may_hold(spec: &LeaseSpec, identity: &str, take_over: bool, now: Timestamp) -> bool {
    let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
    let expired = spec.renew_time.as_ref().is_none_or(|renewed| {
        let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0));
        renewed.0 + SignedDuration::from_secs(duration) < now
    });
    holder.is_none_or(|h| h == identity) || take_over || expired
}

impl PrimaryLease {
    pub fn new(client: Client, settings: &Settings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            name: Names::primary_lease(&settings.cluster),
            identity: settings.instance.clone(),
            state: Arc::new(Mutex::new(LeaseState::default())),
            wanted: Arc::new(Mutex::new(Wanted::default())),
        }
    }

    fn spec(&self, duration: Duration) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(duration.as_secs()).unwrap_or(5).max(1)),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..LeaseSpec::default()
        }
    }

    /// One attempt to hold the Lease: `Ok(false)` when another instance holds it.
    async fn hold(&self, wanted: Wanted) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(wanted.duration)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let current = lease.spec.clone().unwrap_or_default();
        if !may_hold(&current, &self.identity, wanted.take_over, Timestamp::now()) {
            return Ok(false);
        }
        lease.spec = Some(self.spec(wanted.duration));
        // The resourceVersion read makes a concurrent writer's update fail this one.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Give the Lease up (a demoted or stopping primary), so the next primary need not
    /// wait for it to expire. Only a Lease this instance holds is touched.
    pub async fn release(&self) {
        let attempt = async {
            let mut lease = self.api.get_opt(&self.name).await.ok()??;
            let spec = lease.spec.as_mut()?;
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Some(());
            }
            spec.holder_identity = None;
            spec.renew_time = None;
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
                .ok()
                .map(|_| ())
        };
        match tokio::time::timeout(RENEW_TIMEOUT * 2, attempt).await {
            Ok(Some(())) => info!(lease = %self.name, "released the primary Lease"),
            _ => warn!(lease = %self.name, "could not release the primary Lease; it expires"),
        }
        if let Ok(mut state) = self.state.lock() {
            *state = LeaseState::default();
        }
    }

    /// Renew every second while the supervisor wants the Lease held; forever.
    pub fn spawn_keeper(&self) {
        let keeper = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RENEW_EVERY);
            loop {
                tick.tick().await;
                let wanted = keeper.wanted.lock().map(|w| *w).unwrap_or_default();
                if !wanted.hold {
                    continue;
                }
                let sent = Instant::now();
                let outcome = tokio::time::timeout(RENEW_TIMEOUT, keeper.hold(wanted)).await;
                let Ok(mut state) = keeper.state.lock() else {
                    return;
                };
                match outcome {
                    Ok(Ok(true)) => {
                        state.renewed_at = Some(sent);
                        state.held_by_other = false;
                    }
                    Ok(Ok(false)) => state.held_by_other = true,
                    Ok(Err(error)) => warn!(%error, "could not renew the primary Lease"),
                    Err(_) => warn!("renewing the primary Lease timed out"),
                }
            }
        });
    }

    /// Ask for the Lease held (or not) with these terms.
    pub fn want(&self, wanted: Wanted) {
        if let Ok(mut w) = self.wanted.lock() {
            *w = wanted;
        }
    }

    pub fn state(&self) -> LeaseState {
        self.state.lock().map(|s| *s).unwrap_or_default()
    }

    /// Hold the Lease now, before PostgreSQL starts as a primary; `false` when another
    /// instance holds it or the API server did not answer.
    pub async fn acquire_now(&self, wanted: Wanted) -> bool {
        let sent = Instant::now();
        match tokio::time::timeout(RENEW_TIMEOUT * 2, self.hold(wanted)).await {
            Ok(Ok(true)) => {
                if let Ok(mut state) = self.state.lock() {
                    state.renewed_at = Some(sent);
                    state.held_by_other = false;
                }
                self.want(wanted);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(Into::into),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            lease_duration_seconds: Some(5),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_lease_is_free_when_unheld_own_expired_or_handed_over() {
        let now = Timestamp::from_second(1000).unwrap();
        assert!(may_hold(&spec(None, 999), "geo-2", false, now));
        assert!(may_hold(&spec(Some("geo-2"), 999), "geo-2", false, now));
        assert!(!may_hold(&spec(Some("geo-1"), 999), "geo-2", false, now));
        assert!(may_hold(&spec(Some("geo-1"), 990), "geo-2", false, now));
        assert!(may_hold(&spec(Some("geo-1"), 999), "geo-2", true, now));
    }
}
