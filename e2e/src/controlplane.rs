//! A real, throw-away Kubernetes control plane (etcd, kube-apiserver,
//! kube-controller-manager and, when asked for, kube-scheduler) running as host
//! processes on free loopback ports.
//!
//! What the components are (their command lines, the PKI, the kubeconfigs) is
//! defined once, for this harness and for the local cluster of
//! `e2e/cluster/cluster.sh`, by the bash files under `e2e/cluster/lib/`:
//! `e2e/cluster/controlplane.sh prepare DIR` writes the certificates and
//! kubeconfigs, `controlplane.sh argv COMPONENT DIR` prints a command line.
//! This module picks the ports, runs the processes and waits for them.
//!
//! The binaries are built by `e2e/tools/build-tools.sh` into
//! `${GEODB_CACHE:-~/.cache/geodb}`; the environment variables `GEODB_ETCD`,
//! `GEODB_KUBE_APISERVER`, `GEODB_KUBE_CONTROLLER_MANAGER` and
//! `GEODB_KUBE_SCHEDULER` override their locations.
//!
//! Everything lives in a fresh temporary directory (etcd data, the CA and the
//! certificates, kubeconfigs, one log file per component) that is removed on
//! drop unless `GEODB_KEEP_TEMP=1`. The processes are killed on drop, and the
//! kernel kills them (`PR_SET_PDEATHSIG`) if the test process dies first.
//! Clients authenticate with client certificates of the cluster CA, which
//! also signed kube-apiserver's serving certificate.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let cp = geodb_e2e::controlplane::ControlPlane::start().await?;
//! let admin = cp.client()?;
//! let operator = cp.client_for_operator()?; // only what RBAC grants `geodb-operator`
//! # let _ = (admin, operator);
//! # Ok(())
//! # }
//! ```

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use secrecy::SecretString;

/// Kubernetes version the harness is pinned to (see `e2e/tools/k8s/go.mod`).
pub const K8S_VERSION: &str = "v1.34.4";
/// etcd version the harness is pinned to (see `e2e/tools/etcd/go.mod`).
pub const ETCD_VERSION: &str = "v3.6.16";

/// Component name of etcd, for [`ControlPlane::logs_tail`].
pub const ETCD: &str = "etcd";
/// Component name of kube-apiserver, for [`ControlPlane::logs_tail`].
pub const KUBE_APISERVER: &str = "kube-apiserver";
/// Component name of kube-controller-manager, for [`ControlPlane::logs_tail`].
pub const KUBE_CONTROLLER_MANAGER: &str = "kube-controller-manager";
/// Component name of kube-scheduler, for [`ControlPlane::logs_tail`].
pub const KUBE_SCHEDULER: &str = "kube-scheduler";
/// All components, in start order.
pub const COMPONENTS: [&str; 4] = [
    ETCD,
    KUBE_APISERVER,
    KUBE_SCHEDULER,
    KUBE_CONTROLLER_MANAGER,
];

/// User name of the admin identity (group `system:masters`).
pub const ADMIN_USER: &str = "admin";
/// User name of the operator identity: no groups, so it can do only what RBAC
/// grants `User geodb-operator` (plus `system:authenticated` defaults).
pub const OPERATOR_USER: &str = "geodb-operator";

/// The launcher: the control plane's definition, shared with the local cluster.
const LAUNCHER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/cluster/controlplane.sh");

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const TERM_GRACE: Duration = Duration::from_secs(3);
const START_ATTEMPTS: usize = 3;

/// Extra knobs for [`ControlPlane::start_with`]. `Default` is what
/// [`ControlPlane::start`] uses.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Appended to the kube-apiserver command line (later flags win).
    pub extra_apiserver_args: Vec<String>,
    /// Appended to the kube-controller-manager command line (later flags win).
    pub extra_controller_manager_args: Vec<String>,
    /// Leave kube-controller-manager to [`ControlPlane::start_controller_manager`], so
    /// that CRDs installed before it are known to its garbage collector from the start
    /// (it learns of new kinds only every 30 s).
    pub defer_controller_manager: bool,
    /// Also run kube-scheduler, which binds pods to the Node objects a test creates
    /// (no kubelet runs them). Without it pods stay unscheduled.
    pub scheduler: bool,
}

/// A running control plane. Dropping it stops the processes and removes the
/// temporary directory (unless `GEODB_KEEP_TEMP=1`).
pub struct ControlPlane {
    run: Running,
    server_url: String,
    etcd_url: String,
    controller_manager_url: String,
    /// kube-controller-manager's program and arguments, from the launcher.
    kcm_argv: Vec<String>,
    admin: kube::Config,
    operator: kube::Config,
    /// PEM of the cluster CA (`pki/ca.crt`): it signed kube-apiserver's serving
    /// certificate and the client certificates.
    ca_pem: String,
    kubeconfig: PathBuf,
    operator_kubeconfig: PathBuf,
}

/// The processes and the directory; dropping it stops the processes and
/// removes the directory (unless kept).
struct Running {
    dir: PathBuf,
    keep_dir: bool,
    procs: Vec<Proc>,
}

struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("dir", &self.run.dir)
            .field("server_url", &self.server_url)
            .field("etcd_url", &self.etcd_url)
            .field("kubeconfig", &self.kubeconfig)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager and waits until
    /// they are ready (at most ~60 s each).
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(Options::default()).await
    }

    /// Like [`ControlPlane::start`], with extra command-line flags (and
    /// kube-scheduler when [`Options::scheduler`]).
    pub async fn start_with(opts: Options) -> anyhow::Result<Self> {
        let mut attempt = 1;
        loop {
            match Self::start_once(&opts).await {
                Ok(cp) => return Ok(cp),
                // Ports are picked by binding :0 and releasing them, so another
                // process can grab one before our child binds it; retry then.
                Err(e) if attempt < START_ATTEMPTS && is_port_conflict(&e) => {
                    tracing::warn!(attempt, "control plane lost a port race, retrying: {e:#}");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn start_once(opts: &Options) -> anyhow::Result<Self> {
        let t0 = Instant::now();
        let keep_dir = std::env::var("GEODB_KEEP_TEMP").is_ok_and(|v| v == "1");
        let [etcd_port, etcd_peer_port, api_port, kcm_port, sched_port] = free_ports::<5>()?;
        let launcher = Launcher {
            env: vec![
                ("GEODB_CP_API_PORT", api_port.to_string()),
                ("GEODB_CP_ETCD_PORT", etcd_port.to_string()),
                ("GEODB_CP_ETCD_PEER_PORT", etcd_peer_port.to_string()),
                ("GEODB_CP_KCM_PORT", kcm_port.to_string()),
                ("GEODB_CP_SCHED_PORT", sched_port.to_string()),
                (
                    "GEODB_CP_APISERVER_ARGS",
                    arg_lines(&opts.extra_apiserver_args)?,
                ),
                (
                    "GEODB_CP_KCM_ARGS",
                    arg_lines(&opts.extra_controller_manager_args)?,
                ),
            ],
        };
        // From here on, dropping `run` stops whatever was started and removes
        // the directory.
        let mut run = Running {
            dir: make_temp_dir()?,
            keep_dir,
            procs: Vec::new(),
        };
        let dir = run.dir.clone();
        if keep_dir {
            // Marks the directory as not to be swept by sweep_stale_dirs.
            fs::write(dir.join("keep"), "GEODB_KEEP_TEMP=1\n")?;
        }
        fs::create_dir_all(dir.join("logs"))?;

        // The PKI and kubeconfigs are made while etcd starts (it needs none
        // of them). kube-apiserver retries its etcd connection, so only its
        // /readyz is awaited.
        let prepare = launcher.start(&["prepare".as_ref(), dir.as_os_str()])?;
        let (etcd, apiserver, kcm, scheduler) = tokio::join!(
            launcher.argv(ETCD, &dir),
            launcher.argv(KUBE_APISERVER, &dir),
            launcher.argv(KUBE_CONTROLLER_MANAGER, &dir),
            async {
                if opts.scheduler {
                    launcher.argv(KUBE_SCHEDULER, &dir).await.map(Some)
                } else {
                    Ok(None)
                }
            },
        );
        let (etcd, apiserver, kcm_argv, scheduler) = (etcd?, apiserver?, kcm?, scheduler?);
        run.spawn(ETCD, &etcd)?;
        Launcher::finish(prepare, "prepare").await?;
        let t_prepare = t0.elapsed();

        let kubeconfig = dir.join("kubeconfig");
        let operator_kubeconfig = dir.join("operator.kubeconfig");
        let admin = config_from_kubeconfig(&kubeconfig).await?;
        let operator = config_from_kubeconfig(&operator_kubeconfig).await?;
        let ca_file = dir.join("pki").join("ca.crt");
        let ca_pem = fs::read_to_string(&ca_file)
            .with_context(|| format!("reading {}", ca_file.display()))?;

        run.spawn(KUBE_APISERVER, &apiserver)?;
        let probe = kube::Client::try_from(admin.clone()).context("building the admin client")?;
        run.wait_until(KUBE_APISERVER, || {
            let probe = probe.clone();
            async move { get_ok(&probe, "/readyz").await }
        })
        .await?;
        let t_api = t0.elapsed();
        if let Some(scheduler) = scheduler {
            run.spawn(KUBE_SCHEDULER, &scheduler)?;
            // Like kube-controller-manager's: a self-signed serving certificate and an
            // unauthenticated /healthz.
            let probe = insecure_client(&format!("https://127.0.0.1:{sched_port}"))?;
            run.wait_until(KUBE_SCHEDULER, || {
                let probe = probe.clone();
                async move { get_ok(&probe, "/healthz").await }
            })
            .await?;
        }

        let mut cp = ControlPlane {
            run,
            server_url: format!("https://127.0.0.1:{api_port}"),
            etcd_url: format!("http://127.0.0.1:{etcd_port}"),
            controller_manager_url: format!("https://127.0.0.1:{kcm_port}"),
            kcm_argv,
            admin,
            operator,
            ca_pem,
            kubeconfig,
            operator_kubeconfig,
        };
        if !opts.defer_controller_manager {
            cp.start_controller_manager().await?;
        }
        tracing::info!(
            dir = %cp.run.dir.display(),
            server = %cp.server_url,
            prepare_ms = t_prepare.as_millis() as u64,
            apiserver_ready_ms = t_api.as_millis() as u64,
            total_ms = t0.elapsed().as_millis() as u64,
            "control plane is up"
        );
        Ok(cp)
    }

    /// Starts kube-controller-manager and waits until it is healthy; only needed after
    /// [`Options::defer_controller_manager`].
    pub async fn start_controller_manager(&mut self) -> anyhow::Result<()> {
        if self
            .run
            .procs
            .iter()
            .any(|p| p.name == KUBE_CONTROLLER_MANAGER)
        {
            return Ok(());
        }
        self.run.spawn(KUBE_CONTROLLER_MANAGER, &self.kcm_argv)?;
        // Its serving certificate is self-signed (in its --cert-dir) and
        // /healthz needs no authentication.
        let kcm = insecure_client(&self.controller_manager_url)?;
        self.run
            .wait_until(KUBE_CONTROLLER_MANAGER, || {
                let kcm = kcm.clone();
                async move { get_ok(&kcm, "/healthz").await }
            })
            .await
    }

    /// A client authenticated as `admin` (group `system:masters`).
    pub fn client(&self) -> anyhow::Result<kube::Client> {
        kube::Client::try_from(self.admin_config()).context("building the admin kube client")
    }

    /// A client authenticated as `geodb-operator`: it can do only what RBAC
    /// grants that user.
    pub fn client_for_operator(&self) -> anyhow::Result<kube::Client> {
        kube::Client::try_from(self.operator_config())
            .context("building the geodb-operator kube client")
    }

    /// `kube::Config` of the admin identity (from the admin kubeconfig: a
    /// client certificate, TLS verified against the cluster CA).
    pub fn admin_config(&self) -> kube::Config {
        self.admin.clone()
    }

    /// `kube::Config` of the `geodb-operator` identity (from its kubeconfig).
    pub fn operator_config(&self) -> kube::Config {
        self.operator.clone()
    }

    /// `kube::Config` for any bearer token (for example a ServiceAccount
    /// token from the TokenRequest API), TLS verified against the cluster CA.
    pub fn config_for_token(&self, token: &str) -> kube::Config {
        let mut config = kube::Config::new(self.admin.cluster_url.clone());
        config.root_cert.clone_from(&self.admin.root_cert);
        config.auth_info.token = Some(SecretString::from(token.to_string()));
        config
    }

    /// PEM of the cluster CA, which signed kube-apiserver's serving
    /// certificate (always `Some`).
    pub fn ca_pem(&self) -> Option<&str> {
        Some(&self.ca_pem)
    }

    /// A kubeconfig for the admin identity, usable by kubectl.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A kubeconfig for the `geodb-operator` identity.
    pub fn operator_kubeconfig_path(&self) -> &Path {
        &self.operator_kubeconfig
    }

    /// `https://127.0.0.1:<port>` of kube-apiserver.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// `http://127.0.0.1:<port>` of etcd.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// The temporary directory holding data, keys, kubeconfigs and logs.
    pub fn temp_dir(&self) -> &Path {
        &self.run.dir
    }

    /// Path of a component's log file (stdout and stderr).
    pub fn log_path(&self, component: &str) -> PathBuf {
        self.run.log_path(component)
    }

    /// The last `n` lines of a component's log (`etcd`, `kube-apiserver`,
    /// `kube-controller-manager`, `kube-scheduler`).
    pub fn logs_tail(&self, component: &str, n: usize) -> String {
        tail_file(&self.log_path(component), n)
    }

    /// The last `n` lines of every component's log, with headers; for
    /// printing when a test fails.
    pub fn logs_tail_all(&self, n: usize) -> String {
        self.run.logs_tail_all(n)
    }

    /// Fails if a component process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.run.check_alive()
    }
}

impl Running {
    fn log_path(&self, component: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{component}.log"))
    }

    fn logs_tail_all(&self, n: usize) -> String {
        let mut out = String::new();
        for c in COMPONENTS {
            let log = self.log_path(c);
            if !log.exists() {
                // Not started (kube-scheduler unless asked for).
                continue;
            }
            let _ = writeln!(out, "===== {c} (last {n} lines of {}) =====", log.display());
            out.push_str(&tail_file(&log, n));
            out.push('\n');
        }
        out
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            if let Some(status) = p.child.try_wait()? {
                bail!(
                    "{} exited ({status}); last log lines:\n{}",
                    p.name,
                    tail_file(&p.log, 30)
                );
            }
        }
        Ok(())
    }

    /// Runs `argv` (program, then arguments, as printed by the launcher).
    fn spawn(&mut self, name: &'static str, argv: &[String]) -> anyhow::Result<()> {
        let (bin, args) = argv
            .split_first()
            .ok_or_else(|| anyhow!("the launcher printed no command line for {name}"))?;
        let log = self.log_path(name);
        let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        let parent = std::process::id();
        // SAFETY: the closure runs between fork and exec and only makes
        // async-signal-safe system calls (prctl, getppid, _exit).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if libc::getppid() as u32 != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = spawn_from_long_lived_thread(cmd)
            .with_context(|| format!("starting {name} ({bin})"))?;
        tracing::debug!(name, pid = child.id(), log = %log.display(), "started");
        self.procs.push(Proc { name, child, log });
        Ok(())
    }

    /// Polls `probe` until it succeeds, the component exits, or the deadline.
    async fn wait_until<F, Fut>(&mut self, name: &str, mut probe: F) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_err = anyhow!("not probed yet");
        loop {
            self.check_alive()
                .with_context(|| format!("while waiting for {name} to become ready"))?;
            match tokio::time::timeout(Duration::from_secs(5), probe()).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => last_err = e,
                Err(_) => last_err = anyhow!("probe timed out"),
            }
            if Instant::now() >= deadline {
                bail!(
                    "{name} not ready after {READY_TIMEOUT:?} (last probe error: {last_err:#}); \
                     component logs:\n{}",
                    self.logs_tail_all(30)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Stops the components in reverse start order (kube-apiserver needs
    /// etcd to shut down cleanly): SIGTERM to the process group, SIGKILL if
    /// still running after a grace period.
    fn stop(&mut self) {
        while let Some(mut p) = self.procs.pop() {
            let t0 = Instant::now();
            signal_group(&p.child, libc::SIGTERM);
            loop {
                match p.child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if t0.elapsed() < TERM_GRACE => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    _ => {
                        tracing::warn!(
                            name = p.name,
                            "still running after SIGTERM; sending SIGKILL"
                        );
                        signal_group(&p.child, libc::SIGKILL);
                        let _ = p.child.wait();
                        break;
                    }
                }
            }
            tracing::debug!(
                name = p.name,
                ms = t0.elapsed().as_millis() as u64,
                "stopped"
            );
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
        if self.keep_dir {
            eprintln!(
                "GEODB_KEEP_TEMP=1: keeping control plane dir {}",
                self.dir.display()
            );
        } else if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("warning: removing {}: {e}", self.dir.display());
        }
    }
}

fn signal_group(child: &Child, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) has no memory-safety preconditions. The child leads
        // its own process group (process_group(0)) and has not been reaped.
        unsafe {
            libc::kill(-pid, sig);
        }
    }
}

/// `e2e/cluster/controlplane.sh` with the ports and extra arguments of one
/// control plane in its environment.
struct Launcher {
    env: Vec<(&'static str, String)>,
}

impl Launcher {
    fn start(&self, args: &[&std::ffi::OsStr]) -> anyhow::Result<tokio::process::Child> {
        tokio::process::Command::new("bash")
            .arg(LAUNCHER)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (*k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("running bash {LAUNCHER}"))
    }

    /// Waits for a launcher command; its stdout if it succeeded.
    async fn finish(child: tokio::process::Child, what: &str) -> anyhow::Result<String> {
        let out = child
            .wait_with_output()
            .await
            .with_context(|| format!("running {LAUNCHER} {what}"))?;
        if !out.status.success() {
            bail!(
                "{LAUNCHER} {what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end()
            );
        }
        String::from_utf8(out.stdout).with_context(|| format!("{LAUNCHER} {what}: output"))
    }

    /// The command line of `component`: its program (checked to exist), then
    /// its arguments.
    async fn argv(&self, component: &str, dir: &Path) -> anyhow::Result<Vec<String>> {
        let child = self.start(&["argv".as_ref(), component.as_ref(), dir.as_os_str()])?;
        let out = Self::finish(child, &format!("argv {component}")).await?;
        let argv: Vec<String> = out.lines().map(str::to_string).collect();
        let program = argv
            .first()
            .ok_or_else(|| anyhow!("{LAUNCHER} argv {component} printed nothing"))?;
        if !Path::new(program).is_file() {
            let env = match component {
                ETCD => "GEODB_ETCD",
                KUBE_APISERVER => "GEODB_KUBE_APISERVER",
                KUBE_SCHEDULER => "GEODB_KUBE_SCHEDULER",
                _ => "GEODB_KUBE_CONTROLLER_MANAGER",
            };
            bail!(
                "{component} binary not found at {program} (override with ${env}). Build the \
                 control-plane binaries with `e2e/tools/build-tools.sh` (or `make tools`)."
            );
        }
        Ok(argv)
    }
}

/// Extra arguments for the launcher's environment, one per line.
fn arg_lines(args: &[String]) -> anyhow::Result<String> {
    if let Some(bad) = args.iter().find(|a| a.contains('\n') || a.is_empty()) {
        bail!("control-plane argument {bad:?} is empty or has a newline");
    }
    Ok(args.join("\n"))
}

/// `kube::Config` of a kubeconfig file written by the launcher.
async fn config_from_kubeconfig(path: &Path) -> anyhow::Result<kube::Config> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading {}", path.display()))?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading {}", path.display()))
}

fn make_temp_dir() -> anyhow::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = std::env::var_os("TMPDIR")
        .filter(|t| !t.is_empty())
        .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    let dir = base.join(format!(
        "geodb-cp-{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        random_hex(4)?
    ));
    fs::create_dir_all(&base)?;
    sweep_stale_dirs(&base);
    fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Removes `geodb-cp-<pid>-*` directories left behind by killed test
/// processes (Drop never ran), unless marked `keep`.
fn sweep_stale_dirs(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("geodb-cp-"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let path = entry.path();
        // SAFETY: kill(pid, 0) only checks whether the process exists.
        let alive = pid > 0
            && (unsafe { libc::kill(pid, 0) } == 0
                || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH));
        if !alive && !path.join("keep").exists() {
            tracing::debug!(dir = %path.display(), "removing stale control-plane dir");
            let _ = fs::remove_dir_all(&path);
        }
    }
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf
        .iter()
        .fold(String::with_capacity(bytes * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        }))
}

/// N distinct free TCP ports on 127.0.0.1. All listeners are held until every
/// port is picked so the ports differ; they are free again on return.
fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for port in &mut ports {
        let l = TcpListener::bind("127.0.0.1:0").context("binding a free port on 127.0.0.1")?;
        *port = l.local_addr()?.port();
        listeners.push(l);
    }
    Ok(ports)
}

fn is_port_conflict(e: &anyhow::Error) -> bool {
    let s = format!("{e:#}");
    s.contains("address already in use") || s.contains("bind: address")
}

/// A client without credentials that does not verify the server's certificate.
fn insecure_client(url: &str) -> anyhow::Result<kube::Client> {
    let uri: http::Uri = url.parse().with_context(|| format!("parsing {url}"))?;
    let mut config = kube::Config::new(uri);
    config.accept_invalid_certs = true;
    kube::Client::try_from(config).context("building a kube client")
}

/// GET `path`, failing on a non-2xx status. kube's tracing (an ERROR per
/// failed probe, a WARN per unverified TLS handshake) is silenced: failures
/// are expected while a component starts.
async fn get_ok(client: &kube::Client, path: &str) -> anyhow::Result<()> {
    use tracing::instrument::WithSubscriber as _;
    let req = http::Request::get(path).body(Vec::new())?;
    client
        .request_text(req)
        .with_subscriber(tracing::subscriber::NoSubscriber::default())
        .await
        .with_context(|| format!("GET {path}"))?;
    Ok(())
}

fn tail_file(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` from a thread that lives as long as the process.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits,
/// not the process. Tests may spawn from a short-lived thread (each
/// `#[tokio::test]` has its own), so all children are forked from this one
/// thread, which never exits: they die exactly when the test process dies.
fn spawn_from_long_lived_thread(cmd: Command) -> anyhow::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = match SPAWNER.get() {
        Some(s) => s,
        None => {
            let (tx, rx) = mpsc::channel::<SpawnRequest>();
            std::thread::Builder::new()
                .name("geodb-cp-spawner".into())
                .spawn(move || {
                    for (mut cmd, reply) in rx {
                        let _ = reply.send(cmd.spawn());
                    }
                })
                .context("starting the spawner thread")?;
            // If another thread won the race, our thread exits with its
            // sender dropped; it never spawned anything.
            SPAWNER.get_or_init(|| Mutex::new(tx))
        }
    };
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .map_err(|_| anyhow!("spawner lock poisoned"))?
        .send((cmd, reply_tx))
        .map_err(|_| anyhow!("spawner thread is gone"))?;
    Ok(reply_rx
        .recv()
        .map_err(|_| anyhow!("spawner thread is gone"))??)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn free_ports_are_distinct() {
        let p = free_ports::<5>().unwrap();
        for i in 0..5 {
            for j in i + 1..5 {
                assert_ne!(p[i], p[j]);
            }
        }
    }

    #[test]
    fn extra_args_are_lines() {
        assert_eq!(arg_lines(&[]).unwrap(), "");
        let args = ["--a=1".to_string(), "--b=x y".to_string()];
        assert_eq!(arg_lines(&args).unwrap(), "--a=1\n--b=x y");
        assert!(arg_lines(&["--a=1\n--b".to_string()]).is_err());
    }

    #[test]
    fn launcher_is_found() {
        assert!(Path::new(LAUNCHER).is_file(), "{LAUNCHER}");
    }

    #[test]
    fn tail_takes_last_lines() {
        let dir = make_temp_dir().unwrap();
        let f = dir.join("x.log");
        fs::write(&f, "a\nb\nc\n").unwrap();
        assert_eq!(tail_file(&f, 2), "b\nc");
        assert_eq!(tail_file(&f, 10), "a\nb\nc");
        fs::remove_dir_all(dir).unwrap();
    }
}
