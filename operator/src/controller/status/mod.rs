//! Status step: what the status says, computed from what was read, applied and
//! measured, and written one way (a full replacement with the resourceVersion it was
//! computed from), only when it changed.
//!
//! | module | what |
//! |---|---|
//! | `conditions` | condition types, typed reasons, the condition builder |
//! | `instances` | `status.instances[]` |
//! | `summary` | phase, Ready / Progressing / Degraded / PrimaryTransition, names |
//! | `archiving`, `postgis` | the ContinuousArchiving and PostGISReady conditions |

pub mod archiving;
pub mod chores;
pub mod conditions;
mod instances;
mod migrations;
mod postgis;
mod summary;

use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};

use crate::api::{GeoDatabase, GeoDatabaseStatus};
use crate::error::{Error, Result};
pub use chores::Chores;
pub use summary::{choosing, converged, deleting, invalid, refused, Converged};

/// Replace the status of `db` with `status`. The resourceVersion of `db` makes a status
/// computed from a stale view fail (`Error::StaleView`) instead of overwriting what a
/// newer reconcile wrote. Returns the stored object.
pub async fn store(
    client: &Client,
    db: &GeoDatabase,
    status: GeoDatabaseStatus,
) -> Result<GeoDatabase> {
    let namespace = db.namespace().ok_or(Error::MissingObjectKey)?;
    let api: Api<GeoDatabase> = Api::namespaced(client.clone(), &namespace);
    let mut object = db.clone();
    object.status = Some(status);
    object.metadata.managed_fields = None;
    match api
        .replace_status(&db.name_any(), &PostParams::default(), &object)
        .await
    {
        Ok(stored) => Ok(stored),
        Err(kube::Error::Api(response)) if response.code == 409 => Err(Error::StaleView),
        Err(source) => Err(Error::Kube {
            action: "writing status",
            source,
        }),
    }
}

/// Write `status` unless it equals what is stored. Returns whether it wrote.
pub async fn write(client: &Client, db: &GeoDatabase, status: GeoDatabaseStatus) -> Result<bool> {
    if db.status.as_ref() == Some(&status) {
        return Ok(false);
    }
    store(client, db, status).await.map(|_| true)
}
