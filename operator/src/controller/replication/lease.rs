//! The primary Lease as the operator observes it: when its record last changed is
//! measured on the operator's own clock, so a renewal time written by a node whose clock
//! is off cannot make an old primary's Lease look expired early.

use std::time::Instant;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

use super::plan::LeaseObservation;
use crate::controller::Context;
use crate::error::{Error, Result};
use crate::names::Names;

/// A Lease record and when the operator first saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    record: (Option<String>, Option<String>),
    since: Instant,
}

impl Context {
    /// Read the primary Lease of `cluster`; `None` when there is none.
    pub async fn observe_lease(
        &self,
        namespace: &str,
        cluster: &str,
    ) -> Result<Option<LeaseObservation>> {
        let name = Names::primary_lease(cluster);
        let lease = Api::<Lease>::namespaced(self.client.clone(), namespace)
            .get_opt(&name)
            .await
            .map_err(Error::kube("reading the primary Lease"))?;
        let Some(spec) = lease.and_then(|l| l.spec) else {
            return Ok(None);
        };
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = (
            holder.clone(),
            spec.renew_time.as_ref().map(|t| t.0.to_string()),
        );
        let now = Instant::now();
        let since = match self.leases.lock() {
            Ok(mut seen) => {
                let entry = seen
                    .entry((namespace.to_owned(), cluster.to_owned()))
                    .or_insert_with(|| Seen {
                        record: record.clone(),
                        since: now,
                    });
                if entry.record != record {
                    *entry = Seen { record, since: now };
                }
                entry.since
            }
            Err(_) => now,
        };
        Ok(Some(LeaseObservation {
            holder,
            unchanged_for: now.saturating_duration_since(since),
            duration: std::time::Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(5)).unwrap_or(5),
            ),
        }))
    }
}
