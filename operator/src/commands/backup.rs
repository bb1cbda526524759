//! `geodb backup`: one base backup, then retention (the library prints the JSON lines);
//! `geodb restore`: the base backup a recovery target starts from, into a directory.

pub fn backup() -> Result<(), String> {
    geodb::backup::backup_command()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

pub fn dump() -> Result<(), String> {
    geodb::backup::dump_command()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// One file of a dump to stdout: `database`'s archive, or the globals without one.
pub fn dump_fetch(id: Option<&str>, database: Option<String>) -> Result<(), String> {
    let part = match database {
        Some(name) => geodb::backup::dump::Part::Database(name),
        None => geodb::backup::dump::Part::Globals,
    };
    geodb::backup::dump_fetch_command(id, &part)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

pub fn dump_list() -> Result<(), String> {
    geodb::backup::dump_list_command().map_err(|e| e.to_string())
}

/// Unpack the backup `target` (as `spec.bootstrap.recovery.target` is encoded: `latest`,
/// `time:<t>`, `lsn:<l>`, `name:<n>`) starts from into `pgdata`, which must be missing or
/// empty; prints its manifest. Replaying the WAL is PostgreSQL's job afterwards.
pub fn restore(
    source: geodb::archive::Source,
    target: &str,
    pgdata: &std::path::Path,
) -> Result<(), String> {
    let target = geodb::api::RecoveryTarget::decode(target)
        .ok_or_else(|| format!("unknown recovery target {target:?}: latest, time:<RFC 3339>, lsn:<X/Y> or name:<restore point>"))?;
    let config = source.config().map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let manifest = runtime
        .block_on(geodb::backup::restore_for(
            &config,
            &target.catalog_target(),
            pgdata,
        ))
        .map_err(|e| e.to_string())?;
    println!(
        "{}",
        serde_json::to_string(&manifest).map_err(|e| e.to_string())?
    );
    Ok(())
}
