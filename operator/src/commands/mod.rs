//! The binary's subcommands (the library does the work; these wire it up).

pub mod archive;
pub mod backup;
pub mod jobs;
pub mod operator;

use std::path::Path;

/// Logs as JSON lines (or plain text), filtered by `RUST_LOG`.
pub fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// `geodb crdgen`: one YAML file per CRD into `out_dir`.
pub fn crdgen(out_dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    for (name, content) in geodb::crdgen::files().map_err(|e| e.to_string())? {
        let path = out_dir.join(name);
        std::fs::write(&path, content).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

/// `geodb instance`: the agent, on a runtime with one worker (it is PID 1 of a small
/// container).
pub fn instance() -> Result<(), String> {
    init_tracing("json");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let settings = geodb::agent::Settings::from_env().map_err(|e| e.to_string())?;
        let status = geodb::agent::run(settings)
            .await
            .map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("PostgreSQL exited: {status}"))
        }
    })
}

/// `geodb pooler`: PgBouncer under a supervisor that reloads it on a new certificate.
pub fn pooler(config: &Path, watch: &[std::path::PathBuf]) -> Result<(), String> {
    init_tracing("json");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let port = u16::try_from(geodb::names::POOLER_PORT).map_err(|e| e.to_string())?;
    let effective = Path::new(geodb::pooler::console::SOCKET_DIR).join("pgbouncer.ini");
    // Settings this PgBouncer is too old for are left out of what it reads.
    let version = std::process::Command::new("pgbouncer")
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| {
            geodb::pooler::upstream::parse_version(&String::from_utf8_lossy(&out.stdout))
        });
    let upstream = std::sync::Arc::new(geodb::pooler::upstream::Upstream::new(
        config, &effective, version,
    ));
    let status = runtime
        .block_on(async {
            // The control endpoint lives as long as PgBouncer; it failing to bind is
            // logged, not fatal: PgBouncer serves clients without it.
            let control = upstream.clone();
            tokio::spawn(async move {
                if let Err(e) = geodb::pooler::console::serve(port, control).await {
                    tracing::error!(error = %e, "the control endpoint stopped");
                }
            });
            geodb::pooler::run(Path::new("pgbouncer"), &upstream, watch).await
        })
        .map_err(|e| format!("running pgbouncer: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("PgBouncer exited: {status}"))
    }
}

/// `geodb healthcheck`: the pooler's own readiness check when the pooler runs here (its
/// control port answers), else `pg_isready` on the instance's socket.
pub fn healthcheck() -> Result<(), String> {
    use std::io::{Read, Write};
    let port = u16::try_from(geodb::pooler::console::CONTROL_PORT).unwrap_or(8010);
    let timeout = std::time::Duration::from_secs(3);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    if let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, timeout) {
        let _ = stream.set_read_timeout(Some(timeout));
        let request = format!(
            "GET {} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
            geodb::pooler::console::READY_PATH
        );
        let mut answer = String::new();
        stream
            .write_all(request.as_bytes())
            .and_then(|()| stream.read_to_string(&mut answer))
            .map_err(|e| format!("asking the pooler: {e}"))?;
        return match answer.split_whitespace().nth(1) {
            Some("200") => Ok(()),
            status => Err(format!("the pooler is not ready ({status:?})")),
        };
    }
    let status = std::process::Command::new("pg_isready")
        .args(["-q", "-h", geodb::pod_contract::SOCKET_DIR])
        .args(["-p", &geodb::names::POSTGRES_PORT.to_string()])
        .status()
        .map_err(|e| format!("running pg_isready: {e}"))?;
    match status.success() {
        true => Ok(()),
        false => Err("PostgreSQL does not accept connections".to_owned()),
    }
}
