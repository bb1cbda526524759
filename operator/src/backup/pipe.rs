//! A program's standard output into one S3 object: compressed, hashed and uploaded in
//! parts as it comes, never staged on a disk. Base backups (`pg_basebackup`) and
//! logical dumps (`pg_dump`, `pg_dumpall`) both go through here. On any failure the
//! program's process group is killed and the multipart upload aborted, so nothing
//! half-written is left under the key.

use std::process::ExitStatus;

use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;

use crate::archive::segment::Compression;
use crate::archive::store::Store;

use super::error::{BackupError, Result};
use super::upload::{self, Produced};

/// Sees the program's output as it goes by (before compression).
pub trait Observer: Send + 'static {
    fn observe(&mut self, data: &[u8]);
}

/// Nothing to look at.
impl Observer for () {
    fn observe(&mut self, _data: &[u8]) {}
}

/// What went into the object, and the observer that saw every byte of the output.
pub struct Piped<O> {
    pub produced: Produced,
    pub observer: O,
}

/// Run `cmd` (its stdout and stderr piped, in its own process group) and store its
/// output at `key`. `observer` sees the output before compression; `id` names the
/// backup or dump in errors.
pub async fn command_into_object<O>(
    store: &Store,
    id: &str,
    key: &str,
    mut cmd: tokio::process::Command,
    compression: Compression,
    observer: O,
) -> Result<Piped<O>>
where
    O: Observer,
{
    let program = program_name(&cmd);
    let upload_id = store.create_multipart(id, key).await?;
    let piped = match stream(store, id, key, &upload_id, &mut cmd, compression, observer).await {
        Ok((etags, piped)) => store
            .complete_multipart(id, key, &upload_id, &etags)
            .await
            .map(|()| piped)
            .map_err(BackupError::from),
        Err(e) => Err(e),
    };
    if piped.is_err() {
        let _ = store.abort_multipart(id, key, &upload_id).await;
    }
    piped.map_err(|e| match e {
        BackupError::Take { .. } => e,
        other => BackupError::take(id)(format!("{program}: {other}")),
    })
}

async fn stream<O>(
    store: &Store,
    id: &str,
    key: &str,
    upload_id: &str,
    cmd: &mut tokio::process::Command,
    compression: Compression,
    mut observer: O,
) -> Result<(Vec<String>, Piped<O>)>
where
    O: Observer,
{
    let program = program_name(cmd);
    let failed = |message: String| BackupError::take(id)(format!("{program}: {message}"));
    let mut child = cmd
        .spawn()
        .map_err(|e| failed(format!("cannot start: {e}")))?;
    let pid = child.id();
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        kill_group(pid);
        return Err(failed("no output pipes".to_owned()));
    };
    let stderr_task = tokio::spawn(async move {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text).await;
        String::from_utf8_lossy(&text).into_owned()
    });
    let output = match stdout.into_owned_fd() {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => {
            kill_group(pid);
            return Err(failed(format!("its stdout: {e}")));
        }
    };
    let (tx, rx) = mpsc::channel(1);
    let producer = tokio::task::spawn_blocking(move || {
        upload::produce(output, compression, tx, &mut |data| observer.observe(data))
            .map(|p| (p, observer))
    });
    let uploaded = upload::upload(store, id, key, upload_id, rx).await;
    if uploaded.is_err() {
        kill_group(pid);
    }
    let produced = producer
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r);
    if produced.is_err() {
        kill_group(pid);
    }
    let status = child.wait().await;
    let stderr = stderr_task.await.unwrap_or_default();
    let etags = uploaded?;
    let (produced, observer) =
        produced.map_err(|e| failed(format!("streaming its output: {e}")))?;
    let status = status.map_err(|e| failed(e.to_string()))?;
    check_exit(status, &stderr).map_err(failed)?;
    if produced.input_bytes == 0 || etags.is_empty() {
        return Err(failed("wrote nothing".to_owned()));
    }
    Ok((etags, Piped { produced, observer }))
}

fn program_name(cmd: &tokio::process::Command) -> String {
    let program = cmd.as_std().get_program().to_string_lossy();
    program.rsplit('/').next().unwrap_or_default().to_owned()
}

fn kill_group(pid: Option<u32>) {
    let Some(pid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions; the child is not reaped yet,
    // so its pid still names its group.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

fn check_exit(status: ExitStatus, stderr: &str) -> std::result::Result<(), String> {
    if status.success() {
        Ok(())
    } else {
        Err(format!("failed ({status}): {}", last_line(stderr)))
    }
}

/// The last non-empty line: a PostgreSQL program's reason for failing.
pub fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("(no output)")
}

/// A libpq connection string value, quoted.
pub fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A command for one of PostgreSQL's client programs: English messages, no password
/// but the passfile's, output piped, its own process group (a failure stops it and
/// whatever it started).
pub fn client_command(program: std::path::PathBuf) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.env("LC_MESSAGES", "C")
        .env_remove("LC_ALL")
        .env_remove("PGPASSWORD")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        let failed =
            "pg_basebackup: error: connection to server failed: FATAL:  no pg_hba.conf entry\n\n";
        assert!(last_line(failed).ends_with("no pg_hba.conf entry"));
        assert_eq!(last_line(""), "(no output)");
    }

    #[test]
    fn quotes_conninfo_values() {
        assert_eq!(conninfo_value("/tmp/x y"), "'/tmp/x y'");
        assert_eq!(conninfo_value("a'b\\c"), "'a\\'b\\\\c'");
    }

    #[test]
    fn names_the_program() {
        let cmd = client_command("/usr/lib/postgresql/17/bin/pg_dump".into());
        assert_eq!(program_name(&cmd), "pg_dump");
    }
}
