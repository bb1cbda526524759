//! geodb's restore of a base backup: the library function the recovery bootstrap calls
//! (`geodb::backup::restore_for`; there is no subcommand for it), run in this process.

use std::collections::HashMap;
use std::path::Path;

use anyhow::anyhow;
use geodb::archive::ArchiveConfig;

use super::Bench;

/// Whether this build of geodb has a restore the bench can call.
pub const AVAILABLE: bool = true;

/// Restore the newest base backup of the archive `vars` describe into `target` (missing
/// or empty), owned by PostgreSQL's user afterwards.
pub async fn restore_latest(
    bench: &Bench,
    vars: &HashMap<String, String>,
    target: &Path,
) -> anyhow::Result<()> {
    let config = ArchiveConfig::from_lookup(|name| vars.get(name).cloned(), bench.dir.path())
        .map_err(|e| anyhow!("archive settings: {e}"))?;
    geodb::backup::restore_for(&config, &geodb::backup::Target::Latest, target)
        .await
        .map_err(|e| anyhow!("geodb restore: {e}"))?;
    Ok(())
}
