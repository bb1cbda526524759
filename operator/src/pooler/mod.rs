//! `geodb pooler`: PID 1 of a pooler pod. It runs PgBouncer, turns the kubelet's stop
//! (SIGTERM, which PgBouncer takes as "close everything now") into SIGINT, PgBouncer's
//! safe shutdown: transactions under way finish, then clients reconnect elsewhere;
//! and reloads PgBouncer (SIGHUP) when a watched mounted file changes: a renewed
//! certificate is then served without dropping a client, where restarting the pod would
//! drop them all. `console` is how it drives PgBouncer for the operator.

pub mod console;
pub mod control;
pub mod metrics;
pub mod primary;
pub mod upstream;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::Command;

use tokio::signal::unix::{signal, SignalKind};
use upstream::Upstream;

/// How often the watched files are read (the kubelet updates them every few seconds at
/// best).
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// The contents of every regular file in `dirs` (following the kubelet's symlinks), in
/// name order: equal while nothing changed.
pub fn fingerprint(dirs: &[PathBuf]) -> Vec<u8> {
    let mut out = Vec::new();
    for dir in dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .map(|e| e.path())
                    .filter(|p| p.is_file())
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        for file in files {
            out.extend(file.as_os_str().as_encoded_bytes());
            out.push(0);
            out.extend(std::fs::read(&file).unwrap_or_default());
            out.push(0);
        }
    }
    out
}

fn send(pid: Option<u32>, sig: i32) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) on the child this process spawned, with a valid signal number.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Run `pgbouncer <effective config>` until it exits, reloading it when a file in `watch`
/// changes.
pub async fn run(
    program: &Path,
    upstream: &Upstream,
    watch: &[PathBuf],
) -> std::io::Result<ExitStatus> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    upstream.write()?;
    let mut child = Command::new(program).arg(upstream.effective()).spawn()?;
    let pid = child.id();
    let mut seen = fingerprint(watch);
    let mut tick = tokio::time::interval(WATCH_EVERY);
    loop {
        tokio::select! {
            status = child.wait() => return status,
            _ = terminate.recv() => send(pid, libc::SIGINT),
            _ = interrupt.recv() => send(pid, libc::SIGINT),
            _ = tick.tick() => {
                let now = fingerprint(watch);
                let rewritten = upstream.write().unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "writing PgBouncer's configuration");
                    false
                });
                if now != seen || rewritten {
                    tracing::info!(event = "reload", "configuration changed: reloading PgBouncer");
                    send(pid, libc::SIGHUP);
                    seen = now;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_follows_content_not_hidden_entries() {
        let dir = std::env::temp_dir().join(format!("geodb-pooler-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), "a").unwrap();
        let dirs = [dir.clone()];
        let first = fingerprint(&dirs);
        assert_eq!(fingerprint(&dirs), first);
        // The kubelet's `..data` links and timestamped directories are not files read.
        std::fs::write(dir.join("..2026_12_07"), "x").unwrap();
        assert_eq!(fingerprint(&dirs), first);
        std::fs::write(dir.join("tls.crt"), "b").unwrap();
        assert_ne!(fingerprint(&dirs), first);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_changed_file_reloads_the_child_and_its_exit_is_returned() {
        let dir = std::env::temp_dir().join(format!("geodb-pooler-run-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("tls")).unwrap();
        std::fs::write(dir.join("tls/tls.crt"), "a").unwrap();
        // A stand-in for PgBouncer: exits 7 on its first SIGHUP. A shell cannot trap a
        // signal that was ignored when it started (as under `nohup`), and children inherit
        // the ignoring: the default is restored for this process and so for the child.
        // SAFETY: signal(2) with a valid signal number and the default disposition.
        unsafe { libc::signal(libc::SIGHUP, libc::SIG_DFL) };
        let script = dir.join("bouncer.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\ntrap 'exit 7' HUP\nwhile :; do sleep 0.1; done\n",
        )
        .unwrap();
        let watch = vec![dir.join("tls")];
        let mut running = tokio::spawn({
            let upstream = upstream::Upstream::new(&script, &dir.join("effective.sh"), None);
            let watch = watch.clone();
            async move { run(Path::new("/bin/sh"), &upstream, &watch).await }
        });
        // Keep changing the file until the child has been reloaded (it then exits).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut version = 0u32;
        let status = loop {
            version += 1;
            std::fs::write(dir.join("tls/tls.crt"), version.to_string()).unwrap();
            let wait = tokio::time::timeout(Duration::from_millis(500), &mut running).await;
            if let Ok(done) = wait {
                break done.unwrap().unwrap();
            }
            assert!(tokio::time::Instant::now() < deadline, "never reloaded");
        };
        assert_eq!(status.code(), Some(7));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
