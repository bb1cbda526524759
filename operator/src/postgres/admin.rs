//! Changes the operator makes on an instance: promotion and replication slots.

use std::time::Duration;

use super::connect::{bounded, connect, Login, PgError};
use super::probe::{sample, Sample};

/// What `pg_promote` may take before the operator gives up on this attempt.
const PROMOTE_WAIT: Duration = Duration::from_secs(35);

/// `pg_promote` on `instance` at `address`; one no longer in recovery counts as done.
/// Returns the instance's probe right after, which shows it out of recovery, so the
/// caller need not wait for the next round of probes to record the new primary.
pub async fn promote(instance: &str, address: &str, login: &Login) -> Result<Sample, PgError> {
    let client = connect(instance, address, login).await?;
    match bounded(
        "pg_promote",
        PROMOTE_WAIT,
        client.query_one("SELECT pg_promote(true, 30)", &[]),
    )
    .await
    {
        Ok(row) if row.try_get::<_, bool>(0).unwrap_or(false) => {}
        Ok(_) => return Err(PgError::Query("pg_promote returned false".into())),
        Err(PgError::Query(message)) if message.contains("recovery is not in progress") => {}
        Err(error) => return Err(error),
    }
    sample(&client).await
}

/// What a checkpoint before a switchover may take before the switchover goes on without.
const CHECKPOINT_WAIT: Duration = Duration::from_secs(60);

/// `CHECKPOINT` on `instance` at `address`: the old primary's shutdown in a switchover
/// then has little left to write, and clients wait that much less.
pub async fn checkpoint(instance: &str, address: &str, login: &Login) -> Result<(), PgError> {
    let client = connect(instance, address, login).await?;
    bounded(
        "CHECKPOINT",
        CHECKPOINT_WAIT,
        client.batch_execute("CHECKPOINT"),
    )
    .await
}

/// Which slots to create and which to drop, from the wanted and the existing ones.
pub fn slot_changes<'a>(
    wanted: &'a [String],
    existing: &'a [String],
) -> (Vec<&'a String>, Vec<&'a String>) {
    let create = wanted.iter().filter(|s| !existing.contains(s)).collect();
    let drop = existing.iter().filter(|s| !wanted.contains(s)).collect();
    (create, drop)
}

/// Create the wanted physical replication slots on the primary (`instance` at
/// `address`) and drop the others. An active slot belongs to a replica still streaming
/// and is left for a later pass. Returns what changed.
pub async fn converge_slots(
    (instance, address): (&str, &str),
    login: &Login,
    wanted: &[String],
    existing: &[String],
) -> Result<Vec<String>, PgError> {
    let (create, drop) = slot_changes(wanted, existing);
    if create.is_empty() && drop.is_empty() {
        return Ok(Vec::new());
    }
    let client = connect(instance, address, login).await?;
    let mut changed = Vec::new();
    for slot in create {
        // A slot invalidated for holding too much WAL is dropped and made again; its
        // replica then clones afresh (see `agent::clone::reclone`).
        let lost = client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND wal_status = 'lost' AND NOT active",
                &[slot],
            )
            .await
            .map_err(|e| PgError::query(&e))?;
        client
            .execute(
                "SELECT pg_create_physical_replication_slot($1, true) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                &[slot],
            )
            .await
            .map_err(|e| PgError::query(&e))?;
        changed.push(match lost {
            0 => format!("created {slot}"),
            _ => format!("made again {slot} (it was invalidated: past max_slot_wal_keep_size)"),
        });
    }
    for slot in drop {
        let dropped = client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                &[slot],
            )
            .await
            .map_err(|e| PgError::query(&e))?;
        if dropped > 0 {
            changed.push(format!("dropped {slot}"));
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_created_and_dropped_by_difference() {
        let wanted = vec!["geodb_a".to_owned(), "geodb_b".to_owned()];
        let existing = vec!["geodb_b".to_owned(), "geodb_c".to_owned()];
        let (create, drop) = slot_changes(&wanted, &existing);
        assert_eq!(create, [&wanted[0]]);
        assert_eq!(drop, [&existing[1]]);
    }
}
