//! The database side of a run: the advisory lock, the `geodb_migrations` table, and
//! applying one file in one transaction.

use std::time::Instant;

use tokio_postgres::error::ErrorPosition;
use tokio_postgres::Client;
use tracing::info;

use super::error::{MigrateError, Result};
use super::files::MigrationFile;
use super::name::Version;
use super::plan::Applied;
use super::sqlscan::line_and_column;
use crate::postgres::sql::{ident, literal};

/// The session advisory lock every run takes in the database it migrates (the bytes
/// of `geodbmig`): a second run waits until the first has finished.
pub const LOCK_KEY: i64 = 7_450_483_635_493_103_975;
/// The table of applied migrations, in the run's schema.
pub const TABLE: &str = "geodb_migrations";

/// Take the lock, waiting for another run to finish; whether it had to wait. It is
/// released with the session (or by [`unlock`]).
pub async fn lock(client: &Client) -> Result<bool> {
    let db = MigrateError::database;
    let row = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(db("taking the migration lock"))?;
    if row.get::<_, bool>(0) {
        return Ok(false);
    }
    info!(
        lock = LOCK_KEY,
        "another run holds the migration lock; waiting for it"
    );
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(db("waiting for the migration lock"))?;
    Ok(true)
}

pub async fn unlock(client: &Client) -> Result<()> {
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await
        .map_err(MigrateError::database("releasing the migration lock"))?;
    Ok(())
}

/// `schema.geodb_migrations`, quoted.
pub fn table_name(schema: &str) -> String {
    format!("{}.{}", ident(schema), ident(TABLE))
}

/// Make the schema and the table when missing. Each is looked up first: `IF NOT
/// EXISTS` still needs the CREATE privilege, which a login may lack once they exist.
pub async fn ensure_table(client: &Client, schema: &str) -> Result<()> {
    let db = MigrateError::database;
    let schema_exists = client
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await
        .map_err(db("looking up the schema"))?
        .is_some();
    if !schema_exists {
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", ident(schema)))
            .await
            .map_err(db("creating the schema"))?;
    }
    let table = table_name(schema);
    let table_exists = client
        .query_one(
            &format!("SELECT to_regclass({}) IS NOT NULL", literal(&table)),
            &[],
        )
        .await
        .map_err(db("looking up the migrations table"))?
        .get::<_, bool>(0);
    if !table_exists {
        info!(table = %table, "creating the migrations table");
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {table} (
                    version text PRIMARY KEY,
                    description text NOT NULL,
                    checksum text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now(),
                    duration_ms bigint NOT NULL
                )"
            ))
            .await
            .map_err(db("creating the migrations table"))?;
    }
    Ok(())
}

/// What `geodb_migrations` records.
pub async fn applied(client: &Client, schema: &str) -> Result<Vec<Applied>> {
    let rows = client
        .query(
            &format!(
                "SELECT version, description, checksum FROM {}",
                table_name(schema)
            ),
            &[],
        )
        .await
        .map_err(MigrateError::database("reading the applied migrations"))?;
    rows.iter()
        .map(|row| {
            let version: String = row.get(0);
            Ok(Applied {
                version: Version::parse(&version).map_err(|_| MigrateError::BadRecord(version))?,
                description: row.get(1),
                checksum: row.get(2),
            })
        })
        .collect()
}

/// Apply `file` and record it, in one transaction; its duration in milliseconds. On
/// failure the transaction is rolled back and the error names the file, the server's
/// message and where in the file it failed.
pub async fn apply(client: &mut Client, schema: &str, file: &MigrationFile) -> Result<i64> {
    let failed = |error: tokio_postgres::Error| MigrateError::Apply {
        file: file.file.clone(),
        message: server_message(&file.sql, &error),
    };
    let started = Instant::now();
    let tx = client.transaction().await.map_err(failed)?;
    if let Err(error) = tx.batch_execute(&file.sql).await {
        // Dropping the transaction rolls back too; saying so waits for it.
        let _ = tx.rollback().await;
        return Err(failed(error));
    }
    let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    let insert = format!(
        "INSERT INTO {} (version, description, checksum, duration_ms) VALUES ($1, $2, $3, $4)",
        table_name(schema)
    );
    let recorded = tx
        .execute(
            &insert,
            &[
                &file.version.as_str(),
                &file.description,
                &file.checksum,
                &duration_ms,
            ],
        )
        .await;
    if let Err(error) = recorded {
        let _ = tx.rollback().await;
        return Err(failed(error));
    }
    // Deferred constraints are checked here: a failure is the file's too.
    tx.commit().await.map_err(failed)?;
    // A file's plain SET outlives its transaction; the next file starts clean.
    client
        .batch_execute("RESET ALL; RESET ROLE")
        .await
        .map_err(MigrateError::database("resetting the session"))?;
    Ok(duration_ms)
}

/// The server's message, with its detail and hint, and the line and column in `sql`
/// it points at.
pub fn server_message(sql: &str, error: &tokio_postgres::Error) -> String {
    let Some(db) = error.as_db_error() else {
        return crate::jobs::connection::describe(error);
    };
    let mut message = format!(
        "{}: {} (SQLSTATE {})",
        db.severity(),
        db.message(),
        db.code().code()
    );
    if let Some(ErrorPosition::Original(position)) = db.position() {
        let (line, column) = line_and_column(sql, *position as usize);
        message.push_str(&format!(" at line {line}, column {column}"));
    }
    if let Some(detail) = db.detail() {
        message.push_str(&format!("; detail: {detail}"));
    }
    if let Some(hint) = db.hint() {
        message.push_str(&format!("; hint: {hint}"));
    }
    if let Some(context) = db.where_() {
        message.push_str(&format!("; context: {}", context.replace('\n', " / ")));
    }
    message
}
