//! `make bench-pooler`: pgbench against the local cluster, through the operator's pooler,
//! straight at the primary and through a bare PgBouncer with the same settings run on
//! the node beside it, in one run. Prints a table and writes `target/bench/pooler.json`.
//!
//! (a) a connection per transaction (`pgbench -C`, SCRAM over TLS): pooler / direct TPS;
//! (b) 2,000 clients held through the pooler, select-only: errors;
//! (c) select-only steady load: pooler / direct and pooler / bare PgBouncer TPS;
//! (d) switchovers under load through the pooler, back and forth (`BENCH_SWITCHOVERS`,
//! default 3): client errors and the longest stall of any.
//! `BENCH_ONLY=switchover` runs (d) alone.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _};
use geodb_e2e::bench::{conninfo, env_secs, pgbench};
use geodb_e2e::drill::{Endpoint, Fault, Target};
use geodb_e2e::kube_util::wait_for;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::DeleteParams;
use kube::{Api, Client};
use serde_json::json;

const POOL_SIZE: i32 = 20;

/// A bare PgBouncer on the node with the operator's pooler settings, in front of `rw`.
struct Bare {
    dir: PathBuf,
    pid: u32,
}

impl Bare {
    fn start(rw: &Endpoint, port: u16) -> anyhow::Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("geodb-bench-pgbouncer-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let status = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=bench-pgbouncer"])
            .arg("-keyout")
            .arg(dir.join("tls.key"))
            .arg("-out")
            .arg(dir.join("tls.crt"))
            .output()?;
        if !status.status.success() {
            bail!("openssl: {}", String::from_utf8_lossy(&status.stderr));
        }
        std::fs::write(
            dir.join("userlist.txt"),
            format!("\"{}\" \"{}\"\n", rw.user, rw.password),
        )?;
        let d = dir.display();
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\n* = host={host} port={pgport}\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 pidfile = {d}/pgbouncer.pid\nlogfile = {d}/pgbouncer.log\n\
                 auth_type = scram-sha-256\nauth_file = {d}/userlist.txt\n\
                 pool_mode = transaction\nmax_client_conn = 3000\n\
                 default_pool_size = {POOL_SIZE}\nreserve_pool_size = 0\n\
                 client_tls_sslmode = require\nclient_tls_key_file = {d}/tls.key\n\
                 client_tls_cert_file = {d}/tls.crt\nserver_tls_sslmode = require\n\
                 ignore_startup_parameters = extra_float_digits\n",
                host = rw.host,
                pgport = rw.port,
            ),
        )?;
        // PgBouncer refuses to run as root.
        let chown = Command::new("chown")
            .args(["-R", "nobody"])
            .arg(&dir)
            .status()?;
        if !chown.success() {
            bail!("chown {}", dir.display());
        }
        let child = Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg("pgbouncer")
            .arg(dir.join("pgbouncer.ini"))
            .spawn()
            .context("starting pgbouncer")?;
        Ok(Self {
            dir,
            pid: child.id(),
        })
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn create_cluster(client: &Client, ns: &str) -> anyhow::Result<Target> {
    geodb_e2e::bench::create_bench_cluster(
        client,
        ns,
        json!({"instances": 2, "storage": {"size": "2Gi"},
               "postgresql": {"parameters": {"shared_buffers": "64MB", "max_connections": "100"}},
               "pooler": {"maxClientConn": 3000, "defaultPoolSize": POOL_SIZE}}),
    )
    .await?;
    let target = Target {
        client: client.clone(),
        ns: ns.to_owned(),
        name: "bench".into(),
        instances: 2,
    };
    target.prepare_tables().await?;
    Ok(target)
}

type Figures = serde_json::Map<String, serde_json::Value>;

/// (a), (b) and (c): the figures and their targets.
fn load_figures(
    pooler: &str,
    pooled: &Endpoint,
    direct: &str,
    bare: &str,
    rw: &Endpoint,
    secs: &str,
) -> anyhow::Result<(Figures, Figures)> {
    // (c) steady select-only load, the three side by side (interleaved, twice).
    let steady = ["-S", "-c", "16", "-j", "2", "-T", secs];
    let mut select = [0.0f64; 3];
    for _ in 0..2 {
        for (i, (conn, pw)) in [
            (pooler, &pooled.password),
            (direct, &rw.password),
            (bare, &rw.password),
        ]
        .into_iter()
        .enumerate()
        {
            let run = pgbench(conn, pw, &steady)?;
            eprintln!("select-only {i}: {run:?}");
            select[i] += run.tps / 2.0;
        }
    }
    // (a) a new connection (TLS + SCRAM) per transaction.
    let per_txn = ["-C", "-S", "-c", "8", "-j", "2", "-T", secs];
    let connect_pooler = pgbench(pooler, &pooled.password, &per_txn)?;
    let connect_direct = pgbench(direct, &rw.password, &per_txn)?;
    let connect_bare = pgbench(bare, &rw.password, &per_txn)?;
    eprintln!("connection per transaction: pooler {connect_pooler:?}, direct {connect_direct:?}, bare {connect_bare:?}");
    // (b) 2,000 clients held through the pooler: pgbench connects them all, then each
    // runs its transactions (a duration would also count the time spent connecting).
    let held = pgbench(
        pooler,
        &pooled.password,
        &["-S", "-c", "2000", "-j", "2", "-t", "5"],
    )?;
    eprintln!("2000 clients: {held:?}");
    let figures = json!({
        "conn_per_txn_pooler_per_s": connect_pooler.tps,
        "conn_per_txn_direct_per_s": connect_direct.tps,
        "conn_per_txn_bare_pgbouncer_per_s": connect_bare.tps,
        "conn_per_txn_ratio": connect_pooler.tps / connect_direct.tps,
        "conn_per_txn_bare_vs_direct_ratio": connect_bare.tps / connect_direct.tps,
        "held_clients_count": 2000,
        "held_clients_errors_count": held.aborted as u64 + held.failed,
        "held_clients_per_s": held.tps,
        "select_pooler_per_s": select[0],
        "select_direct_per_s": select[1],
        "select_bare_pgbouncer_per_s": select[2],
        "select_pooler_vs_direct_ratio": select[0] / select[1],
        "select_pooler_vs_bare_ratio": select[0] / select[2],
    });
    let targets = json!({
        "conn_per_txn_ratio": {"min": 10},
        "held_clients_errors_count": {"max": 0},
        "select_pooler_vs_direct_ratio": {"min": 0.6},
        "select_pooler_vs_bare_ratio": {"min": 0.9},
    });
    match (figures, targets) {
        (serde_json::Value::Object(f), serde_json::Value::Object(t)) => Ok((f, t)),
        _ => bail!("figures are objects"),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let secs = env_secs("BENCH_SECONDS", 15).to_string();
    let client = Client::try_default()
        .await
        .context("KUBECONFIG must point at the local cluster")?;
    let ns = format!("bench-pooler-{}", std::process::id());
    let target = create_cluster(&client, &ns).await?;
    let rw = Endpoint::of(&client, &ns, "bench-app-rw", "bench-rw").await?;
    let pooled = Endpoint::of(&client, &ns, "bench-app-pooler", "bench-pooler").await?;
    let direct = conninfo(&rw.host, rw.port, &rw);
    let pooler = conninfo(&pooled.host, pooled.port, &pooled);
    let bare_port = 6499;
    let _bare = Bare::start(&rw, bare_port)?;
    let bare = conninfo("127.0.0.1", bare_port, &rw);
    pgbench(&direct, &rw.password, &["-i", "-q", "-s", "10"])?;
    wait_for(
        "the bare PgBouncer answering",
        Duration::from_secs(20),
        || async { pgbench(&bare, &rw.password, &["-S", "-c", "1", "-t", "1"]).ok() },
    )
    .await?;

    let only_switchover = std::env::var("BENCH_ONLY").is_ok_and(|v| v == "switchover");
    let mut figures = serde_json::Map::new();
    let mut targets = serde_json::Map::new();
    if !only_switchover {
        let (f, t) = load_figures(&pooler, &pooled, &direct, &bare, &rw, &secs)?;
        figures.extend(f);
        targets.extend(t);
    }
    // (d) switchovers back and forth with pgbench writing through the pooler beside the
    // drill's writers; the figure is the worst of them.
    let rounds = env_secs("BENCH_SWITCHOVERS", 3);
    let (mut errors, mut stall, mut tps) = (0usize, Duration::ZERO, f64::INFINITY);
    let mut seen = Vec::new();
    for round in 1..=rounds {
        let load = {
            let (pooler, pw) = (pooler.clone(), pooled.password.clone());
            std::thread::spawn(move || {
                pgbench(&pooler, &pw, &["-N", "-c", "8", "-j", "2", "-T", "40"])
            })
        };
        let report = target
            .drill(Fault::Switchover, 10_000_000, Duration::from_secs(180))
            .await?;
        let during = load
            .join()
            .map_err(|_| anyhow::anyhow!("pgbench thread"))??;
        eprintln!("switchover {round}: {report:?}\npgbench during it: {during:?}");
        errors += report.pooler_errors.len() + during.aborted + during.failed as usize;
        stall = stall.max(report.pooler_pause);
        tps = tps.min(during.tps);
        seen.push(json!({"from": report.old_primary, "to": report.new_primary,
                         "stall_s": report.pooler_pause.as_secs_f64(),
                         "pooler_errors": report.pooler_errors}));
    }
    figures.extend([
        ("switchover_count".into(), json!(rounds)),
        ("switchover_client_errors_count".into(), json!(errors)),
        (
            "switchover_longest_stall_s".into(),
            json!(stall.as_secs_f64()),
        ),
        ("switchover_pgbench_per_s".into(), json!(tps)),
    ]);
    targets.extend([
        ("switchover_client_errors_count".into(), json!({"max": 0})),
        ("switchover_longest_stall_s".into(), json!({"max": 2})),
    ]);
    let context = json!({
        "pgbench_seconds": secs,
        "scale": 10,
        "pool_size": POOL_SIZE,
        "max_connections": 100,
        "tls": "required on every path (sslmode=require)",
        "auth": "SCRAM-SHA-256; the pooler looks roles up with auth_query, the bare PgBouncer reads an auth_file",
        "machine": "2 cores, the cluster, pgbench and the bare PgBouncer on one node",
        "switchovers": seen,
    });
    geodb_e2e::bench::write_report(
        "pooler",
        &json!({"figures": figures, "targets": targets, "context": context}),
    )?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces.delete(&ns, &DeleteParams::default()).await?;
    Ok(())
}
