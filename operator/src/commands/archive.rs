//! `geodb wal-push` and `geodb wal-fetch`: PostgreSQL's archive and restore commands.

use std::path::Path;
use std::process::ExitCode;

/// Any failure is one line on stderr (PostgreSQL logs it) and a non-zero exit; it is
/// also kept beside the data directory for the operator's probe, and removed after a
/// success.
pub fn wal_push(path: &Path) -> Result<(), String> {
    let result = geodb::archive::push_command(path).map_err(|e| e.to_string());
    if let Some(file) = error_file() {
        match &result {
            Ok(()) => {
                let _ = std::fs::remove_file(&file);
            }
            Err(message) => {
                let _ = std::fs::write(&file, format!("{message}\n"));
            }
        }
    }
    result
}

/// `<volume>/geodb-archive-error`, beside `PGDATA` (on the data volume, outside the data
/// directory so no base backup copies it); none without `PGDATA`.
fn error_file() -> Option<std::path::PathBuf> {
    let pgdata = std::env::var_os(geodb::pod_contract::env::PGDATA)?;
    let volume = Path::new(&pgdata).parent()?;
    Some(volume.join(geodb::pod_contract::ARCHIVE_ERROR_FILE))
}

/// Exit 1 quietly when the archive has no such file, 126 with a message on other errors.
pub fn wal_fetch(source: geodb::archive::Source, name: &str, destination: &Path) -> ExitCode {
    let result = geodb::archive::fetch_command(source, name, destination);
    let code = geodb::archive::fetch_exit_code(&result);
    if let Err(e) = &result {
        if code != geodb::archive::EXIT_NOT_FOUND {
            eprintln!("geodb: {e}");
        }
    }
    ExitCode::from(code)
}
