//! What the GeoDatabase asks of this instance, and what the agent does about it.

use std::time::Duration;

use kube::Api;
use tracing::warn;

use super::settings::Settings;
use crate::api::GeoDatabase;

/// Bound of one read of the GeoDatabase: a primary that cannot confirm its role in time
/// counts the read as failed.
pub const API_TIMEOUT: Duration = Duration::from_millis(800);

/// What the GeoDatabase says, as read by the instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// The instance that must be the primary (`status.targetPrimary`, else
    /// `status.currentPrimary`).
    pub primary: String,
    pub instances: i32,
    pub failover_delay: Duration,
}

impl Desired {
    /// `None` until the operator has recorded a primary: nothing may start before then
    /// (over kept volumes the primary is the one they recorded, not an assumed one).
    pub fn of(db: &GeoDatabase) -> Option<Self> {
        let primary = db.status.as_ref()?.chosen_primary()?.to_owned();
        Some(Self {
            primary,
            instances: db.spec.instances,
            failover_delay: db.spec.replication.failover_delay(),
        })
    }

    /// Without the API: a single instance in the role its data directory has.
    pub fn alone(settings: &Settings) -> Self {
        Self {
            primary: settings.bootstrap_instance.clone(),
            instances: 1,
            failover_delay: Duration::from_secs(5),
        }
    }

    /// The primary Lease lasts the failover delay: the operator promotes another instance
    /// only once it was not renewed for that long.
    pub fn lease_duration(&self) -> Duration {
        self.failover_delay
    }

    /// A primary that has not renewed its Lease for this long stops accepting writes: half
    /// the lease, so it is down well before the operator may promote anything else.
    pub fn fence_after(&self) -> Duration {
        (self.lease_duration() / 2).max(Duration::from_secs(1))
    }
}

/// What the supervisor does next, from the data directory and the desired primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Start PostgreSQL as it is: a primary (after a crash too: crash recovery in place
    /// is faster than any failover and loses nothing), or a replica.
    Start,
    /// The data directory was a primary's and another instance is the primary now:
    /// rewind it (or clone afresh) and start as a replica.
    Rejoin,
}

pub fn next_step(me: &str, desired: &Desired, is_standby: bool) -> Next {
    if desired.primary != me && !is_standby {
        Next::Rejoin
    } else {
        Next::Start
    }
}

/// The API of this namespace's GeoDatabases, with the pod's service account.
pub fn kube_api(client: kube::Client, settings: &Settings) -> Api<GeoDatabase> {
    Api::namespaced(client, &settings.namespace)
}

/// The GeoDatabase's view, or `None` when the API does not answer within `API_TIMEOUT`.
pub async fn fetch(api: Option<&Api<GeoDatabase>>, settings: &Settings) -> Option<Desired> {
    let api = api?;
    match tokio::time::timeout(API_TIMEOUT, api.get(&settings.cluster)).await {
        Ok(Ok(db)) => Desired::of(&db),
        Ok(Err(error)) => {
            warn!(%error, "cannot read the GeoDatabase");
            None
        }
        Err(_) => {
            warn!("the API server did not answer in time");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(primary: &str) -> Desired {
        Desired {
            primary: primary.into(),
            instances: 3,
            failover_delay: Duration::from_secs(5),
        }
    }

    #[test]
    fn a_former_primary_rejoins_and_others_just_start() {
        assert_eq!(next_step("geo-1", &desired("geo-2"), false), Next::Rejoin);
        assert_eq!(next_step("geo-1", &desired("geo-2"), true), Next::Start);
        assert_eq!(next_step("geo-2", &desired("geo-2"), true), Next::Start);
        // A primary that crashed starts again in place.
        assert_eq!(next_step("geo-1", &desired("geo-1"), false), Next::Start);
    }

    #[test]
    fn fencing_comes_well_before_the_failover_delay() {
        assert_eq!(desired("x").fence_after(), Duration::from_millis(2500));
        let short = Desired {
            failover_delay: Duration::from_secs(1),
            ..desired("x")
        };
        assert_eq!(short.fence_after(), Duration::from_secs(1));
    }
}
