//! Logical dumps: `geodb dump` writes the roles (`pg_dumpall --globals-only`) and every
//! database that accepts connections (`pg_dump`, custom format, uncompressed and then
//! zstd on the way) into `<prefix>/dumps/<id>/`, then the manifest `dump.json` last:
//! a dump stopped midway is never counted. Then the newest `GEODB_DUMP_KEEP` complete
//! dumps are kept and older ones deleted. `geodb dump-fetch` streams one file of a dump
//! back, verified, for `pg_restore` or `psql`.

use serde::{Deserialize, Serialize};

use crate::archive::checksum::sha256_hex;
use crate::archive::config::ArchiveConfig;
use crate::archive::segment::Compression;
use crate::archive::store::Store;

use super::config::{BackupConfig, Passfile};
use super::error::{BackupError, Result};
use super::manifest::{compression_name, group_ids, id_order, under_prefix};
use super::pipe::{self, conninfo_value};
use super::take::new_id;
use super::time;

pub const DUMP_MANIFEST_FILE: &str = "dump.json";
/// `application_name` of the dump's connections.
pub const APPLICATION_NAME: &str = "geodb-dump";
/// A dump waits this long for a table lock (behind a migration, say) before it fails,
/// instead of queueing every later query of that table behind itself.
const LOCK_WAIT_TIMEOUT: &str = "120s";
const LIST_DATABASES: &str =
    "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname";

/// Written last: the dump's files, each with its size and checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DumpManifest {
    /// The UTC start time, `YYYYMMDDTHHMMSSZ`, with `-2`, `-3`... when taken already.
    pub id: String,
    pub started_at: String,
    pub finished_at: String,
    /// The server it was taken from, and its version.
    pub source: String,
    pub server_version: String,
    #[serde(with = "compression_name")]
    pub compression: Compression,
    pub files: Vec<DumpFile>,
}

/// One file of a dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DumpFile {
    /// The database dumped; none for the roles and tablespaces (`globals.sql`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// The object's name under the dump's directory.
    pub file: String,
    /// Bytes `pg_dump` wrote.
    pub size_bytes: u64,
    /// Bytes stored, and their SHA-256.
    pub stored_bytes: u64,
    pub sha256: String,
}

/// Which file of a dump `dump-fetch` streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Globals,
    Database(String),
}

impl DumpManifest {
    pub fn finished_secs(&self) -> Option<i64> {
        time::parse_rfc3339(&self.finished_at)
    }

    pub fn file(&self, part: &Part) -> Option<&DumpFile> {
        self.files.iter().find(|f| match part {
            Part::Globals => f.database.is_none(),
            Part::Database(name) => f.database.as_deref() == Some(name),
        })
    }
}

/// `<prefix>/dumps/`.
pub fn dumps_prefix(prefix: &str) -> String {
    under_prefix(prefix, "dumps/")
}

fn dump_dir(prefix: &str, id: &str) -> String {
    format!("{}{id}/", dumps_prefix(prefix))
}

fn manifest_key(prefix: &str, id: &str) -> String {
    format!("{}{DUMP_MANIFEST_FILE}", dump_dir(prefix, id))
}

/// `globals.sql`, then `db-1.dump`, `db-2.dump`... in the order of `databases` (names
/// are the manifest's: any database name is a safe key this way).
fn file_names(databases: &[String], compression: Compression) -> Vec<(Option<String>, String)> {
    std::iter::once((None, format!("globals.sql{}", compression.suffix())))
        .chain(databases.iter().enumerate().map(|(i, db)| {
            (
                Some(db.clone()),
                format!("db-{}.dump{}", i + 1, compression.suffix()),
            )
        }))
        .collect()
}

/// The connection string of the dump's programs.
fn conninfo(config: &BackupConfig, passfile: &Passfile, database: &str) -> String {
    [
        ("host", config.host.as_str()),
        ("port", &config.port.to_string()),
        ("user", &config.user),
        ("dbname", database),
        ("passfile", &passfile.path().to_string_lossy()),
        ("application_name", APPLICATION_NAME),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}", conninfo_value(v)))
    .collect::<Vec<_>>()
    .join(" ")
}

/// One query's rows through `psql` (unaligned, NUL between rows: any name survives).
async fn query(config: &BackupConfig, passfile: &Passfile, sql: &str) -> Result<Vec<String>> {
    let output = pipe::client_command(config.pg_bin.join("psql"))
        .args(["-X", "-A", "-t", "-0", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .arg(format!(
            "--dbname={}",
            conninfo(config, passfile, "postgres")
        ))
        .output()
        .await
        .map_err(|e| BackupError::Runtime(format!("psql: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(BackupError::Runtime(format!(
            "psql {}: {}",
            output.status,
            pipe::last_line(&stderr)
        )));
    }
    Ok(rows(&String::from_utf8_lossy(&output.stdout)))
}

fn rows(text: &str) -> Vec<String> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    text.split('\0')
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect()
}

fn dump_command(
    config: &BackupConfig,
    passfile: &Passfile,
    database: Option<&str>,
) -> tokio::process::Command {
    match database {
        None => {
            let mut cmd = pipe::client_command(config.pg_bin.join("pg_dumpall"));
            cmd.args(["--globals-only", "--no-password"]).arg(format!(
                "--dbname={}",
                conninfo(config, passfile, "postgres")
            ));
            cmd
        }
        Some(db) => {
            let mut cmd = pipe::client_command(config.pg_bin.join("pg_dump"));
            // Uncompressed here: zstd on the way is faster and smaller than gzip.
            cmd.args(["--format=custom", "--compress=0", "--no-password"])
                .arg(format!("--lock-wait-timeout={LOCK_WAIT_TIMEOUT}"))
                .arg(format!("--dbname={}", conninfo(config, passfile, db)));
            cmd
        }
    }
}

/// Take one dump of the server `config` names.
pub async fn take(archive: &ArchiveConfig, config: &BackupConfig) -> Result<DumpManifest> {
    super::wait_for_server(config).await?;
    let store = Store::new(archive)?;
    let started = time::now_secs();
    let prefix = &archive.prefix;
    let id = new_id(&store, &dumps_prefix(prefix), &time::format_id(started)).await?;
    let passfile = Passfile::write(&config.password_file)?;
    let databases = query(config, &passfile, LIST_DATABASES).await?;
    let server_version = query(config, &passfile, "SHOW server_version")
        .await?
        .into_iter()
        .next()
        .unwrap_or_default();
    let mut files = Vec::new();
    for (database, file) in file_names(&databases, archive.compression) {
        let key = format!("{}{file}", dump_dir(prefix, &id));
        let cmd = dump_command(config, &passfile, database.as_deref());
        let piped =
            pipe::command_into_object(&store, &id, &key, cmd, archive.compression, ()).await?;
        files.push(DumpFile {
            database,
            file,
            size_bytes: piped.produced.input_bytes,
            stored_bytes: piped.produced.stored_bytes,
            sha256: piped.produced.sha256,
        });
    }
    drop(passfile);
    let manifest = DumpManifest {
        id: id.clone(),
        started_at: time::format_rfc3339(started),
        finished_at: time::format_rfc3339(time::now_secs_ceil()),
        source: config.host.clone(),
        server_version,
        compression: archive.compression,
        files,
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| BackupError::take(&id)(format!("manifest: {e}")))?;
    store
        .put(&id, &manifest_key(prefix, &id), &json, &sha256_hex(&json))
        .await?;
    Ok(manifest)
}

/// The dumps in the bucket: complete ones (with their manifests) and the ids of those
/// without a manifest, each oldest first.
pub async fn list(
    store: &Store,
    archive: &ArchiveConfig,
) -> Result<(Vec<DumpManifest>, Vec<String>)> {
    let prefix = dumps_prefix(&archive.prefix);
    let listed = store.list("dumps", &prefix).await?;
    let (complete, incomplete) = group_ids(&listed, &prefix, DUMP_MANIFEST_FILE);
    let mut manifests = Vec::with_capacity(complete.len());
    for id in complete {
        let key = manifest_key(&archive.prefix, &id);
        let bad = |reason: String| BackupError::BadManifest {
            key: key.clone(),
            reason,
        };
        let Some(fetched) = store.get(&id, &key).await? else {
            continue;
        };
        let manifest: DumpManifest =
            serde_json::from_slice(&fetched.body).map_err(|e| bad(e.to_string()))?;
        if manifest.id != id {
            return Err(bad(format!("it names dump {:?}", manifest.id)));
        }
        manifests.push(manifest);
    }
    manifests.sort_by(|a, b| id_order(&a.id).cmp(&id_order(&b.id)));
    Ok((manifests, incomplete))
}

/// The dumps to delete (pure): complete ones beyond the newest `keep`, and incomplete
/// ones older than the newest complete one (a newer one may still be running).
pub fn expired(complete: &[String], incomplete: &[String], keep: usize) -> Vec<String> {
    let keep = keep.max(1);
    let old = complete.len().saturating_sub(keep);
    let mut delete: Vec<String> = complete[..old].to_vec();
    if let Some(newest) = complete.last() {
        delete.extend(
            incomplete
                .iter()
                .filter(|id| id_order(id) < id_order(newest))
                .cloned(),
        );
    }
    delete
}

/// Delete every expired dump: its manifest first (it stops counting), then its files.
pub async fn apply_keep(archive: &ArchiveConfig, keep: usize) -> Result<Vec<String>> {
    let store = Store::new(archive)?;
    let (manifests, incomplete) = list(&store, archive).await?;
    let complete: Vec<String> = manifests.into_iter().map(|m| m.id).collect();
    let delete = expired(&complete, &incomplete, keep);
    for id in &delete {
        let _ = store.delete(id, &manifest_key(&archive.prefix, id)).await;
        for object in store.list(id, &dump_dir(&archive.prefix, id)).await? {
            store.delete(id, &object.key).await?;
        }
    }
    Ok(delete)
}

/// Stream `part` of dump `id` (the newest complete one when `None`) to `out`,
/// decompressed; fails when its checksum or size differs from the manifest's.
pub async fn fetch(
    archive: &ArchiveConfig,
    id: Option<&str>,
    part: &Part,
    out: std::fs::File,
) -> Result<DumpFile> {
    let store = Store::new(archive)?;
    let (manifests, _) = list(&store, archive).await?;
    let manifest = match id {
        Some(id) => manifests.iter().find(|m| m.id == id),
        None => manifests.last(),
    }
    .ok_or_else(|| {
        BackupError::Runtime(format!(
            "no complete dump {} in the bucket",
            id.map_or("at all".to_owned(), |i| format!("{i:?}"))
        ))
    })?;
    let failed = BackupError::restore(&manifest.id);
    let file = manifest
        .file(part)
        .ok_or_else(|| BackupError::restore(&manifest.id)(format!("the dump has no {part:?}")))?;
    let key = format!("{}{}", dump_dir(&archive.prefix, &manifest.id), file.file);
    let Some(mut body) = store.get_stream(&manifest.id, &key).await? else {
        return Err(failed(format!("{key} is not in the bucket")));
    };
    let (download, unpacked) =
        super::restore::download(&mut body, &key, manifest.compression, out).await;
    download.map_err(BackupError::restore(&manifest.id))?;
    let got = unpacked.map_err(|e| BackupError::restore(&manifest.id)(format!("{key}: {e}")))?;
    if !got.sha256.eq_ignore_ascii_case(&file.sha256)
        || got.stored_bytes != file.stored_bytes
        || got.tar_bytes != file.size_bytes
    {
        return Err(BackupError::restore(&manifest.id)(format!(
            "{key}: the manifest says sha256 {} and {} bytes, the object has {} and {}",
            file.sha256, file.size_bytes, got.sha256, got.tar_bytes
        )));
    }
    Ok(file.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn keeps_the_newest_and_drops_failed_older_ones() {
        let complete = ids(&["20261201T040000Z", "20261202T040000Z", "20261203T040000Z"]);
        let incomplete = ids(&["20261202T050000Z", "20261204T040000Z"]);
        assert_eq!(
            expired(&complete, &incomplete, 2),
            ids(&["20261201T040000Z", "20261202T050000Z"])
        );
        assert_eq!(expired(&complete, &[], 3), Vec::<String>::new());
        // Never all of them, and never a dump that may still be running.
        assert_eq!(expired(&complete, &[], 0).len(), 2);
        assert_eq!(expired(&[], &incomplete, 1), Vec::<String>::new());
        // -10 sorts after -9.
        let same_second = ids(&["20261201T040000Z-9", "20261201T040000Z-10"]);
        assert_eq!(expired(&same_second, &[], 1), ids(&["20261201T040000Z-9"]));
    }

    #[test]
    fn files_are_named_by_position_and_rows_split_on_nul() {
        let names = file_names(&ids(&["app", "we/ird"]), Compression::Zstd);
        assert_eq!(
            names,
            vec![
                (None, "globals.sql.zst".to_owned()),
                (Some("app".to_owned()), "db-1.dump.zst".to_owned()),
                (Some("we/ird".to_owned()), "db-2.dump.zst".to_owned()),
            ]
        );
        assert_eq!(rows("app\0postgres\0\n"), ids(&["app", "postgres"]));
        assert_eq!(rows("a b\nc\0x"), ids(&["a b\nc", "x"]));
        assert!(rows("").is_empty());
    }

    #[test]
    fn the_manifest_finds_each_part() {
        let file = |db: Option<&str>, f: &str| DumpFile {
            database: db.map(str::to_owned),
            file: f.into(),
            size_bytes: 1,
            stored_bytes: 1,
            sha256: "00".into(),
        };
        let m = DumpManifest {
            id: "20261201T040000Z".into(),
            started_at: "2026-12-01T04:00:00Z".into(),
            finished_at: "2026-12-01T04:00:09Z".into(),
            source: "geo-rw.maps.svc".into(),
            server_version: "17.6".into(),
            compression: Compression::Zstd,
            files: vec![
                file(None, "globals.sql.zst"),
                file(Some("app"), "db-1.dump.zst"),
            ],
        };
        assert_eq!(m.file(&Part::Globals).unwrap().file, "globals.sql.zst");
        let app = Part::Database("app".into());
        assert_eq!(m.file(&app).unwrap().file, "db-1.dump.zst");
        assert!(m.file(&Part::Database("x".into())).is_none());
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"compression\":\"zstd\""), "{json}");
        assert_eq!(serde_json::from_str::<DumpManifest>(&json).unwrap(), m);
        assert_eq!(
            m.finished_secs(),
            time::parse_rfc3339("2026-12-01T04:00:09Z")
        );
        assert_eq!(dumps_prefix("maps/geo"), "maps/geo/dumps/");
    }
}
