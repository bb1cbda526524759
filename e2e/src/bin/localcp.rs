//! `geodb-localcp`: runs a local control plane (etcd, kube-apiserver,
//! kube-controller-manager) for development until SIGINT/SIGTERM.
//!
//! Usage: geodb-localcp [--kubeconfig PATH]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use geodb_e2e::controlplane::{ControlPlane, OPERATOR_USER};
use tokio::signal::unix::{signal, SignalKind};

const USAGE: &str = "usage: geodb-localcp [--kubeconfig PATH]

Starts etcd, kube-apiserver and kube-controller-manager on free loopback
ports, writes the admin kubeconfig to PATH (if given) and runs until
SIGINT/SIGTERM. Binaries come from e2e/tools/build-tools.sh.
Set GEODB_KEEP_TEMP=1 to keep the data and logs directory afterwards.";

struct Args {
    kubeconfig: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Option<Args>> {
    let mut kubeconfig = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        } else if arg == "--kubeconfig" {
            let v = args.next().context("--kubeconfig needs a PATH")?;
            kubeconfig = Some(PathBuf::from(v));
        } else if let Some(v) = arg.strip_prefix("--kubeconfig=") {
            kubeconfig = Some(PathBuf::from(v));
        } else {
            bail!("unknown argument {arg:?}\n\n{USAGE}");
        }
    }
    Ok(Some(Args { kubeconfig }))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("geodb-localcp: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let Some(args) = parse_args()? else {
        println!("{USAGE}");
        return Ok(());
    };
    // Install the handlers before the slow start so that Ctrl-C during
    // start-up still tears down cleanly.
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;

    eprintln!("geodb-localcp: starting the control plane...");
    let t0 = Instant::now();
    let mut cp = tokio::select! {
        cp = ControlPlane::start() => cp.context("starting the control plane")?,
        _ = sigint.recv() => bail!("interrupted during start-up"),
        _ = sigterm.recv() => bail!("terminated during start-up"),
    };
    let kubeconfig = std::fs::read_to_string(cp.kubeconfig_path())
        .with_context(|| format!("reading {}", cp.kubeconfig_path().display()))?;
    if let Some(path) = &args.kubeconfig {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(path, &kubeconfig)
            .with_context(|| format!("writing the kubeconfig to {}", path.display()))?;
    }

    println!("{kubeconfig}");
    eprintln!(
        "geodb-localcp: control plane up in {:.1}s at {}",
        t0.elapsed().as_secs_f64(),
        cp.server_url()
    );
    match &args.kubeconfig {
        Some(p) => eprintln!(
            "  admin kubeconfig:    {} (export KUBECONFIG={0})",
            p.display()
        ),
        None => eprintln!("  admin kubeconfig:    {}", cp.kubeconfig_path().display()),
    }
    eprintln!(
        "  {OPERATOR_USER} kubeconfig: {}",
        cp.operator_kubeconfig_path().display()
    );
    eprintln!("  data and logs:       {}", cp.temp_dir().display());
    eprintln!("geodb-localcp: press Ctrl-C to stop");

    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let result = loop {
        tokio::select! {
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
            _ = tick.tick() => {
                if let Err(e) = cp.check_alive() {
                    break Err(e.context("a control-plane component died"));
                }
            }
        }
    };
    eprintln!("geodb-localcp: stopping...");
    drop(cp);
    eprintln!("geodb-localcp: stopped");
    result
}
