//! Files the agent writes: private files, passfiles, the data directory's mode.

use std::path::Path;

use super::error::{AgentError, Result};
use super::settings::Settings;
use crate::names::POSTGRES_PORT;

/// Write `content` to `path`, readable by this user only.
pub fn write_private(path: &Path, content: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(AgentError::io(path))?;
    file.write_all(content.as_bytes())
        .map_err(AgentError::io(path))?;
    // The mode above applies to new files only; the kubelet's fsGroup handling may have
    // widened an existing one.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(AgentError::io(path))
}

fn pgpass_escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace(':', "\\:")
}

/// A passfile for `user`: keeps the password out of the process list and of
/// `primary_conninfo`.
pub fn write_pgpass(path: &Path, user: &str, password: &str) -> Result<()> {
    write_private(
        path,
        &format!("*:{POSTGRES_PORT}:*:{user}:{}\n", pgpass_escape(password)),
    )
}

/// PostgreSQL refuses a data directory others can read; the kubelet's fsGroup handling
/// adds group bits when it mounts the volume.
pub fn restrict_data_directory(settings: &Settings) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&settings.pgdata, std::fs::Permissions::from_mode(0o700))
        .map_err(AgentError::io(&settings.pgdata))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passfile_escapes_separators() {
        assert_eq!(pgpass_escape(r"a:b\c"), r"a\:b\\c");
    }
}
