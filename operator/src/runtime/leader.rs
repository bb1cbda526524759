//! Leader election on a coordination.k8s.io Lease, so that two operator replicas never
//! reconcile at once. The holder renews every `renew_every`, each attempt bounded in
//! time, and stops (the process exits) when it has not renewed for two thirds of
//! `lease_duration`; a standby takes over only once the lease has not been renewed for
//! the whole `lease_duration`.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tracing::{info, warn};

#[derive(Clone, Debug)]
pub struct LeaderElection {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("Lease request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("lost the leader Lease {0}")]
    Lost(String),
    #[error("renewing the leader Lease took longer than {0:?}")]
    Timeout(Duration),
}

fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().map(|t| t.0) else {
        return true;
    };
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    renewed + duration < now
}

impl LeaderElection {
    fn api(&self, client: &Client) -> Api<Lease> {
        Api::namespaced(client.clone(), &self.namespace)
    }

    fn spec(&self, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_duration.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One attempt to become or stay the leader. Conflicts mean someone else won.
    pub async fn try_acquire(&self, client: &Client) -> Result<bool, LeaderError> {
        let api = self.api(client);
        let Some(mut lease) = api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(0, None)),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let current = lease.spec.clone().unwrap_or_default();
        let ours = current.holder_identity.as_deref() == Some(self.identity.as_str());
        if !ours && !expired(&current, Timestamp::now()) {
            return Ok(false);
        }
        let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours { current.acquire_time } else { None };
        lease.spec = Some(self.spec(transitions, acquired));
        // `replace` carries the resourceVersion we read: a concurrent writer makes it fail.
        match api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Give the Lease up (on shutdown), so a standby takes over without waiting for it to
    /// expire. Only a Lease this process holds is touched.
    pub async fn release(&self, client: &Client) {
        let api = self.api(client);
        let Ok(Some(mut lease)) = api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        match api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!(lease = %self.name, "released the leader Lease"),
            Err(error) => warn!(%error, "could not release the leader Lease"),
        }
    }

    /// Wait until this process holds the Lease.
    pub async fn acquire(&self, client: &Client) {
        loop {
            match self.renew(client).await {
                Ok(true) => {
                    info!(lease = %self.name, identity = %self.identity, "became leader");
                    return;
                }
                Ok(false) => {}
                Err(error) => warn!(%error, "leader election attempt failed"),
            }
            // Standbys look often: a released Lease is taken over within a second.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// A leader stops acting once it has not renewed for this share of the lease: the
    /// rest (a third) covers a standby whose clock runs ahead, so two leaders never act
    /// at once.
    pub fn acting_limit(&self) -> Duration {
        self.lease_duration * 2 / 3
    }

    /// One renewal, bounded in time so that a hanging request cannot outlast the limit.
    async fn renew(&self, client: &Client) -> Result<bool, LeaderError> {
        let bound = self.renew_every.max(Duration::from_millis(500));
        match tokio::time::timeout(bound, self.try_acquire(client)).await {
            Ok(result) => result,
            Err(_) => Err(LeaderError::Timeout(bound)),
        }
    }

    /// Renew every `renew_every` until a renewal has not succeeded for `acting_limit`
    /// (counted from when the last good request was sent) or someone else holds the
    /// Lease; then return the error, and the caller stops at once.
    pub async fn keep(&self, client: &Client) -> LeaderError {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.renew_every).await;
            let sent = tokio::time::Instant::now();
            match self.renew(client).await {
                Ok(true) => last_renewed = sent,
                Ok(false) => return LeaderError::Lost(self.name.clone()),
                Err(error) => {
                    warn!(%error, "could not renew the leader Lease");
                    if last_renewed.elapsed() >= self.acting_limit() {
                        return error;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_expiry() {
        let renewed = Timestamp::from_second(1000).unwrap();
        let spec = LeaseSpec {
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        };
        assert!(!expired(&spec, Timestamp::from_second(1010).unwrap()));
        assert!(expired(&spec, Timestamp::from_second(1016).unwrap()));
        assert!(expired(&LeaseSpec::default(), renewed));
    }

    #[test]
    fn a_leader_stops_well_before_a_standby_may_take_over() {
        let election = LeaderElection {
            namespace: "ns".into(),
            name: "lease".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(2),
        };
        assert_eq!(election.acting_limit(), Duration::from_secs(10));
        // Renewals are tried often enough to survive a few failed ones within the limit.
        assert!(election.renew_every * 4 < election.acting_limit());
    }
}
