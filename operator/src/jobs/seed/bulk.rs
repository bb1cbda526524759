//! The bulk load: into empty tables that the seeding role owns, in one transaction, the
//! tables' own secondary indexes and the foreign keys between them are dropped, the rows
//! are loaded, and both are made again from their definitions. Building an index once
//! over sorted input costs far less than inserting a million entries one by one (the GIN
//! full-text index above all), and a foreign key validated by one join costs less than a
//! row lock per image. The transaction makes it all or nothing: a failure or a crash
//! leaves the tables empty with every index and constraint as before. The tables are
//! locked for the load, which is why this path is taken only when they are empty.

use tokio::sync::mpsc;
use tokio_postgres::{Client, Transaction};
use tracing::info;

use super::{load_copies, rows, SeedError, Shared, BATCH};

/// The seeded tables, in load order.
const TABLES: &str = "'locations', 'images', 'moderation_logs'";

/// What is dropped for the load and made again after it.
#[derive(Debug, Default, PartialEq)]
pub struct Deferred {
    /// `(schema-qualified name, CREATE INDEX ...)` of indexes that back no constraint.
    pub indexes: Vec<(String, String)>,
    /// `(table, constraint, definition)` of foreign keys among the seeded tables.
    pub foreign_keys: Vec<(String, String, String)>,
}

impl Deferred {
    /// The statements that drop them (pure).
    pub fn drop_sql(&self) -> String {
        let mut sql = String::new();
        for (table, name, _) in &self.foreign_keys {
            sql.push_str(&format!("ALTER TABLE {table} DROP CONSTRAINT {name};\n"));
        }
        for (index, _) in &self.indexes {
            sql.push_str(&format!("DROP INDEX {index};\n"));
        }
        sql
    }

    /// The statements that make them again (pure): indexes first, so that validating a
    /// foreign key can use them.
    pub fn restore_sql(&self) -> String {
        let mut sql = String::new();
        for (_, definition) in &self.indexes {
            sql.push_str(definition);
            sql.push_str(";\n");
        }
        for (table, name, definition) in &self.foreign_keys {
            sql.push_str(&format!(
                "ALTER TABLE {table} ADD CONSTRAINT {name} {definition};\n"
            ));
        }
        sql
    }
}

/// Whether the bulk path applies: the three tables exist, are empty and belong to a role
/// this session acts as.
async fn applies(tx: &Transaction<'_>) -> Result<bool, SeedError> {
    let row = tx
        .query_one(
            &format!(
                "SELECT count(*) = 3 AND bool_and(pg_has_role(c.relowner, 'USAGE')) \
                   FROM pg_class c WHERE c.oid IN \
                   (SELECT to_regclass(t) FROM unnest(ARRAY[{TABLES}]) t)"
            ),
            &[],
        )
        .await
        .map_err(SeedError::database("looking up the tables' owners"))?;
    if row.get::<_, Option<bool>>(0) != Some(true) {
        return Ok(false);
    }
    tx.batch_execute("LOCK TABLE locations, images, moderation_logs IN ACCESS EXCLUSIVE MODE")
        .await
        .map_err(SeedError::database("locking the tables"))?;
    let row = tx
        .query_one(
            "SELECT NOT EXISTS (SELECT 1 FROM locations) AND NOT EXISTS (SELECT 1 FROM images) \
                AND NOT EXISTS (SELECT 1 FROM moderation_logs)",
            &[],
        )
        .await
        .map_err(SeedError::database("checking that the tables are empty"))?;
    Ok(row.get(0))
}

/// The indexes and foreign keys to defer, read under the lock.
async fn deferred(tx: &Transaction<'_>) -> Result<Deferred, SeedError> {
    let indexes = tx
        .query(
            &format!(
                "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) \
                   FROM pg_index i \
                  WHERE i.indrelid IN (SELECT to_regclass(t) FROM unnest(ARRAY[{TABLES}]) t) \
                    AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) \
                  ORDER BY i.indexrelid"
            ),
            &[],
        )
        .await
        .map_err(SeedError::database("reading the index definitions"))?;
    let foreign_keys = tx
        .query(
            &format!(
                "SELECT c.conrelid::regclass::text, quote_ident(c.conname), \
                        pg_get_constraintdef(c.oid) \
                   FROM pg_constraint c \
                  WHERE c.contype = 'f' \
                    AND c.conrelid IN (SELECT to_regclass(t) FROM unnest(ARRAY[{TABLES}]) t) \
                    AND c.confrelid IN (SELECT to_regclass(t) FROM unnest(ARRAY[{TABLES}]) t) \
                  ORDER BY c.oid"
            ),
            &[],
        )
        .await
        .map_err(SeedError::database("reading the foreign keys"))?;
    Ok(Deferred {
        indexes: indexes.iter().map(|r| (r.get(0), r.get(1))).collect(),
        foreign_keys: foreign_keys
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect(),
    })
}

/// Load everything in one transaction when the bulk path applies; `None` (nothing done,
/// nothing locked any more) when it does not. Returns the images and logs written.
pub async fn load(
    client: &mut Client,
    shared: &std::sync::Arc<Shared>,
    next_ids: &str,
) -> Result<Option<(u64, u64)>, SeedError> {
    // Index builds sort in memory; the server's default (64MB) spills.
    client
        .batch_execute("SET maintenance_work_mem = '256MB'")
        .await
        .map_err(SeedError::database("setting up the session"))?;
    let tx = client
        .transaction()
        .await
        .map_err(SeedError::database("starting the load"))?;
    if !applies(&tx).await? {
        return Ok(None);
    }
    let deferred = deferred(&tx).await?;
    info!(
        indexes = deferred.indexes.len(),
        foreign_keys = deferred.foreign_keys.len(),
        "bulk load: indexes and foreign keys made after the rows"
    );
    let started = std::time::Instant::now();
    tx.batch_execute(&deferred.drop_sql())
        .await
        .map_err(SeedError::database("dropping the indexes for the load"))?;
    // Rows are made while the previous batch loads.
    let (sender, mut batches) = mpsc::channel::<(usize, rows::Batch)>(2);
    let count = shared.count;
    let ids: Vec<i64> = tx
        .query(next_ids, &[&i32::try_from(count).unwrap_or(i32::MAX)])
        .await
        .map_err(SeedError::database("taking location ids"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    info!(
        seconds = started.elapsed().as_secs_f64(),
        "bulk load: location ids taken"
    );
    let producer = {
        let shared = shared.clone();
        tokio::spawn(async move {
            for (index, chunk) in ids.chunks(BATCH as usize).enumerate() {
                let batch = super::make_batch(&shared, index as u64, chunk);
                if sender.send((chunk.len(), batch)).await.is_err() {
                    return;
                }
            }
        })
    };
    let (mut images, mut logs) = (0, 0);
    while let Some((n, batch)) = batches.recv().await {
        images += batch.image_count;
        logs += batch.log_count;
        load_copies(&tx, batch).await?;
        shared
            .done
            .fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
    }
    producer
        .await
        .map_err(|e| SeedError::Runtime(format!("the row maker stopped: {e}")))?;
    info!(
        seconds = started.elapsed().as_secs_f64(),
        "bulk load: rows loaded; building the indexes and foreign keys"
    );
    let building = std::time::Instant::now();
    tx.batch_execute(&deferred.restore_sql())
        .await
        .map_err(SeedError::database("building the indexes and foreign keys"))?;
    info!(
        seconds = building.elapsed().as_secs_f64(),
        "bulk load: indexes and foreign keys built"
    );
    tx.commit()
        .await
        .map_err(SeedError::database("committing the load"))?;
    Ok(Some((images, logs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_keys_go_first_and_come_back_last() {
        let d = Deferred {
            indexes: vec![(
                "locations_geom_idx".into(),
                "CREATE INDEX locations_geom_idx ON public.locations USING gist (geom)".into(),
            )],
            foreign_keys: vec![(
                "images".into(),
                "images_location_id_fkey".into(),
                "FOREIGN KEY (location_id) REFERENCES locations(id) ON DELETE CASCADE".into(),
            )],
        };
        assert_eq!(
            d.drop_sql(),
            "ALTER TABLE images DROP CONSTRAINT images_location_id_fkey;\nDROP INDEX locations_geom_idx;\n"
        );
        assert_eq!(
            d.restore_sql(),
            "CREATE INDEX locations_geom_idx ON public.locations USING gist (geom);\n\
             ALTER TABLE images ADD CONSTRAINT images_location_id_fkey FOREIGN KEY (location_id) REFERENCES locations(id) ON DELETE CASCADE;\n"
        );
    }
}
