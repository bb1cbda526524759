//! Running PostgreSQL's programs (initdb, pg_ctl, psql, pg_basebackup, pg_rewind).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::error::{AgentError, Result};

/// The directory of PostgreSQL's server programs (see
/// [`bin_dir`](crate::postgres::programs::bin_dir)).
pub fn bin_dir() -> Result<PathBuf> {
    crate::postgres::programs::bin_dir().ok_or(AgentError::NoBinaries)
}

/// Run `program` from `bin` with `args`, output to the container log, `stdin` fed in.
pub fn run(bin: &Path, program: &str, args: &[&str], stdin: Option<&str>) -> Result<()> {
    let command = format!("{program} {}", args.first().copied().unwrap_or_default());
    let failed = |detail: &dyn std::fmt::Display| AgentError::command(&command, detail);
    let mut child = Command::new(bin.join(program))
        .args(args)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .spawn()
        .map_err(|e| failed(&e))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(input.as_bytes()).map_err(|e| failed(&e))?;
    }
    let status = child.wait().map_err(|e| failed(&e))?;
    if status.success() {
        Ok(())
    } else {
        Err(failed(&status))
    }
}

/// Run blocking work (external programs, waits) off the async threads.
pub async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AgentError::command(what, e))?
}
