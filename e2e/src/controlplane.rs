//! A real, throw-away Kubernetes control plane (etcd, kube-apiserver and
//! kube-controller-manager) running as host processes on free loopback ports.
//!
//! The binaries are built by `e2e/tools/build-tools.sh` into
//! `${GEODB_CACHE:-~/.cache/geodb}`; the environment variables `GEODB_ETCD`,
//! `GEODB_KUBE_APISERVER` and `GEODB_KUBE_CONTROLLER_MANAGER` override their
//! locations.
//!
//! Everything lives in a fresh temporary directory (etcd data, keys, serving
//! certificates, kubeconfigs, one log file per component) that is removed on
//! drop unless `GEODB_KEEP_TEMP=1`. The processes are killed on drop, and the
//! kernel kills them (`PR_SET_PDEATHSIG`) if the test process dies first.
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
/// All components, in start order.
pub const COMPONENTS: [&str; 3] = [ETCD, KUBE_APISERVER, KUBE_CONTROLLER_MANAGER];

/// User name of the admin identity (group `system:masters`).
pub const ADMIN_USER: &str = "admin";
/// User name of the operator identity: no groups, so it can do only what RBAC
/// grants `User geodb-operator` (plus `system:authenticated` defaults).
pub const OPERATOR_USER: &str = "geodb-operator";

/// kube-controller-manager controllers that are enabled. No kubelet runs, so
/// node-related controllers (node lifecycle, pod GC, ...) are left out.
pub const CONTROLLERS: &[&str] = &[
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
    "job-controller",
    "cronjob-controller",
    "disruption-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "persistentvolumeclaim-protection-controller",
    "persistentvolume-protection-controller",
];

const SERVICE_CLUSTER_IP_RANGE: &str = "10.96.0.0/16";
const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc";
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
}

/// A running control plane. Dropping it stops the processes and removes the
/// temporary directory (unless `GEODB_KEEP_TEMP=1`).
pub struct ControlPlane {
    dir: PathBuf,
    keep_dir: bool,
    procs: Vec<Proc>,
    server_url: String,
    server_uri: http::Uri,
    etcd_url: String,
    controller_manager_url: String,
    kcm_port: u16,
    extra_controller_manager_args: Vec<String>,
    admin_token: String,
    operator_token: String,
    /// PEM of the CA that signed kube-apiserver's self-signed serving
    /// certificate; `None` until kube-apiserver has started (or if the
    /// certificate could not be read: then TLS verification is disabled).
    ca_pem: Option<String>,
    kubeconfig: PathBuf,
    operator_kubeconfig: PathBuf,
}

struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("dir", &self.dir)
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

    /// Like [`ControlPlane::start`], with extra command-line flags.
    pub async fn start_with(opts: Options) -> anyhow::Result<Self> {
        let bins = Binaries::locate()?;
        let mut attempt = 1;
        loop {
            match Self::start_once(&bins, &opts).await {
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

    async fn start_once(bins: &Binaries, opts: &Options) -> anyhow::Result<Self> {
        let t0 = Instant::now();
        let keep_dir = std::env::var("GEODB_KEEP_TEMP").is_ok_and(|v| v == "1");
        let admin_token = random_hex(24)?;
        let operator_token = random_hex(24)?;
        let [etcd_client, etcd_peer, apiserver_port, kcm_port] = free_ports::<4>()?;
        let server_url = format!("https://127.0.0.1:{apiserver_port}");
        let server_uri = server_url.parse().context("parsing the apiserver URL")?;
        let dir = make_temp_dir()?;
        // From here on, Drop stops whatever was started and removes `dir`.
        let mut cp = ControlPlane {
            kubeconfig: dir.join("kubeconfig"),
            operator_kubeconfig: dir.join("operator.kubeconfig"),
            etcd_url: format!("http://127.0.0.1:{etcd_client}"),
            controller_manager_url: format!("https://127.0.0.1:{kcm_port}"),
            kcm_port,
            extra_controller_manager_args: opts.extra_controller_manager_args.clone(),
            server_uri,
            server_url,
            dir,
            keep_dir,
            procs: Vec::new(),
            admin_token,
            operator_token,
            ca_pem: None,
        };
        let dir = cp.dir.clone();
        if keep_dir {
            // Marks the directory as not to be swept by sweep_stale_dirs.
            fs::write(dir.join("keep"), "GEODB_KEEP_TEMP=1\n")?;
        }
        fs::create_dir_all(dir.join("logs"))?;
        fs::create_dir_all(dir.join("pki"))?;

        // Service-account key pair (the private key also serves as the
        // verification key: kube-apiserver derives the public half).
        let sa_key = dir.join("pki").join("sa.key");
        openssl_genrsa(&sa_key).await?;

        fs::write(
            dir.join("tokens.csv"),
            format!(
                "{},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n{},{OPERATOR_USER},{OPERATOR_USER}\n",
                cp.admin_token, cp.operator_token
            ),
        )?;

        // etcd. kube-apiserver retries its etcd connection, so both start
        // concurrently and only /readyz of the apiserver is awaited.
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let mut etcd_args = vec![
            "--name=geodb".to_string(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={}", cp.etcd_url),
            format!("--advertise-client-urls={}", cp.etcd_url),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=geodb={peer_url}"),
            "--initial-cluster-state=new".to_string(),
            "--unsafe-no-fsync=true".to_string(),
            "--log-level=warn".to_string(),
        ];
        // etcd's default (a snapshot every 10,000 entries) stays; this is for telling its
        // snapshot pause apart in benchmarks (docs/development.md).
        if let Ok(n) = std::env::var("GEODB_ETCD_SNAPSHOT_COUNT") {
            etcd_args.push(format!("--snapshot-count={n}"));
        }
        cp.spawn(ETCD, &bins.etcd, &etcd_args)?;

        let mut api_args = vec![
            format!("--etcd-servers={}", cp.etcd_url),
            "--bind-address=127.0.0.1".to_string(),
            format!("--secure-port={apiserver_port}"),
            format!("--cert-dir={}", dir.join("pki").display()),
            format!("--token-auth-file={}", dir.join("tokens.csv").display()),
            "--authorization-mode=RBAC".to_string(),
            format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
            format!("--service-account-key-file={}", sa_key.display()),
            format!("--service-account-signing-key-file={}", sa_key.display()),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            "--allow-privileged=true".to_string(),
            "--profiling=false".to_string(),
        ];
        if !has_default_route() {
            // Without a default route kube-apiserver cannot pick an
            // advertise address by itself and refuses to start.
            api_args.push("--advertise-address=127.0.0.1".to_string());
        }
        api_args.extend(opts.extra_apiserver_args.iter().cloned());
        cp.spawn(KUBE_APISERVER, &bins.kube_apiserver, &api_args)?;

        // The serving certificate is not known before kube-apiserver made
        // it, so the readiness probe cannot verify it.
        let probe = client_for(&cp.server_url, Some(&cp.admin_token))?;
        cp.wait_until(KUBE_APISERVER, || {
            let probe = probe.clone();
            async move { get_ok(&probe, "/readyz").await }
        })
        .await?;
        let t_api = t0.elapsed();

        // kube-apiserver wrote its self-signed serving certificate followed
        // by the CA that signed it (SANs include 127.0.0.1): trust that CA.
        let ca_file = dir.join("pki").join("ca.crt");
        match read_serving_ca(&dir.join("pki").join("apiserver.crt")) {
            Ok(ca) => {
                fs::write(&ca_file, &ca)?;
                cp.ca_pem = Some(ca);
            }
            Err(e) => tracing::warn!("TLS verification disabled: {e:#}"),
        }
        fs::write(
            &cp.kubeconfig,
            cp.kubeconfig_yaml(ADMIN_USER, &cp.admin_token),
        )?;
        fs::write(
            &cp.operator_kubeconfig,
            cp.kubeconfig_yaml(OPERATOR_USER, &cp.operator_token),
        )?;
        if !opts.defer_controller_manager {
            cp.start_controller_manager().await?;
        }
        tracing::info!(
            dir = %cp.dir.display(),
            server = %cp.server_url,
            apiserver_ready_ms = t_api.as_millis() as u64,
            total_ms = t0.elapsed().as_millis() as u64,
            "control plane is up"
        );
        Ok(cp)
    }

    /// Starts kube-controller-manager and waits until it is healthy; only needed after
    /// [`Options::defer_controller_manager`].
    pub async fn start_controller_manager(&mut self) -> anyhow::Result<()> {
        if self.procs.iter().any(|p| p.name == KUBE_CONTROLLER_MANAGER) {
            return Ok(());
        }
        let sa_key = self.dir.join("pki").join("sa.key");
        let ca_file = self.dir.join("pki").join("ca.crt");
        let mut kcm_args = vec![
            format!("--kubeconfig={}", self.kubeconfig.display()),
            // Delegated authn/authz (TokenReview/SubjectAccessReview) so the
            // admin token can read /metrics; there is no client CA to look up.
            format!("--authentication-kubeconfig={}", self.kubeconfig.display()),
            "--authentication-skip-lookup=true".to_string(),
            format!("--authorization-kubeconfig={}", self.kubeconfig.display()),
            "--bind-address=127.0.0.1".to_string(),
            format!("--secure-port={}", self.kcm_port),
            format!("--cert-dir={}", self.dir.join("pki").join("kcm").display()),
            format!("--controllers={}", CONTROLLERS.join(",")),
            format!("--service-account-private-key-file={}", sa_key.display()),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            "--leader-elect=false".to_string(),
            "--use-service-account-credentials=false".to_string(),
            "--profiling=false".to_string(),
        ];
        if self.ca_pem.is_some() {
            // Published to pods as kube-root-ca.crt / ServiceAccount ca.crt.
            kcm_args.push(format!("--root-ca-file={}", ca_file.display()));
        }
        kcm_args.extend(self.extra_controller_manager_args.iter().cloned());
        let bin = Binaries::locate()?.kube_controller_manager;
        self.spawn(KUBE_CONTROLLER_MANAGER, &bin, &kcm_args)?;

        let kcm = client_for(&self.controller_manager_url, None)?;
        self.wait_until(KUBE_CONTROLLER_MANAGER, || {
            let kcm = kcm.clone();
            async move { get_ok(&kcm, "/healthz").await }
        })
        .await?;
        Ok(())
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

    /// `kube::Config` of the admin identity.
    pub fn admin_config(&self) -> kube::Config {
        self.config_for_token(&self.admin_token)
    }

    /// `kube::Config` of the `geodb-operator` identity.
    pub fn operator_config(&self) -> kube::Config {
        self.config_for_token(&self.operator_token)
    }

    /// `kube::Config` for any bearer token (for example a ServiceAccount
    /// token from the TokenRequest API).
    pub fn config_for_token(&self, token: &str) -> kube::Config {
        let mut config = kube::Config::new(self.server_uri.clone());
        match &self.ca_pem {
            Some(ca) => config.root_cert = Some(vec![pem_to_der(ca)]),
            None => config.accept_invalid_certs = true,
        }
        config.auth_info.token = Some(SecretString::from(token.to_string()));
        config
    }

    /// PEM of the CA that signed kube-apiserver's serving certificate.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    fn kubeconfig_yaml(&self, user: &str, token: &str) -> String {
        let tls = match &self.ca_pem {
            Some(ca) => format!("certificate-authority-data: {}", base64(ca.as_bytes())),
            None => "insecure-skip-tls-verify: true".to_string(),
        };
        let server = &self.server_url;
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: geodb-local
  cluster:
    server: {server}
    {tls}
users:
- name: {user}
  user:
    token: {token}
contexts:
- name: geodb-local
  context:
    cluster: geodb-local
    user: {user}
    namespace: default
current-context: geodb-local
"
        )
    }

    /// Bearer token of the admin identity.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Bearer token of the `geodb-operator` identity.
    pub fn operator_token(&self) -> &str {
        &self.operator_token
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
        &self.dir
    }

    /// Path of a component's log file (stdout and stderr).
    pub fn log_path(&self, component: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{component}.log"))
    }

    /// The last `n` lines of a component's log (`etcd`, `kube-apiserver`,
    /// `kube-controller-manager`).
    pub fn logs_tail(&self, component: &str, n: usize) -> String {
        tail_file(&self.log_path(component), n)
    }

    /// The last `n` lines of every component's log, with headers; for
    /// printing when a test fails.
    pub fn logs_tail_all(&self, n: usize) -> String {
        let mut out = String::new();
        for c in COMPONENTS {
            let _ = writeln!(
                out,
                "===== {c} (last {n} lines of {}) =====",
                self.log_path(c).display()
            );
            out.push_str(&self.logs_tail(c, n));
            out.push('\n');
        }
        out
    }

    /// Fails if a component process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
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

    fn spawn(&mut self, name: &'static str, bin: &Path, args: &[String]) -> anyhow::Result<()> {
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
            .with_context(|| format!("starting {name} ({})", bin.display()))?;
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

impl Drop for ControlPlane {
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

/// Locations of the binaries.
struct Binaries {
    etcd: PathBuf,
    kube_apiserver: PathBuf,
    kube_controller_manager: PathBuf,
}

impl Binaries {
    fn locate() -> anyhow::Result<Self> {
        let cache = cache_dir()?;
        let k8s = cache.join(format!("k8s-{K8S_VERSION}"));
        let etcd = cache.join(format!("etcd-{ETCD_VERSION}"));
        Ok(Binaries {
            etcd: binary(ETCD, "GEODB_ETCD", etcd.join("etcd"))?,
            kube_apiserver: binary(
                KUBE_APISERVER,
                "GEODB_KUBE_APISERVER",
                k8s.join("kube-apiserver"),
            )?,
            kube_controller_manager: binary(
                KUBE_CONTROLLER_MANAGER,
                "GEODB_KUBE_CONTROLLER_MANAGER",
                k8s.join("kube-controller-manager"),
            )?,
        })
    }
}

fn cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(c) = std::env::var_os("GEODB_CACHE").filter(|c| !c.is_empty()) {
        return Ok(PathBuf::from(c));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| anyhow!("neither GEODB_CACHE nor HOME is set"))?;
    Ok(PathBuf::from(home).join(".cache").join("geodb"))
}

fn binary(name: &str, env: &str, default: PathBuf) -> anyhow::Result<PathBuf> {
    let (path, origin) = match std::env::var_os(env).filter(|v| !v.is_empty()) {
        Some(p) => (PathBuf::from(p), format!("set by ${env}")),
        None => (default, format!("default location; override with ${env}")),
    };
    if path.is_file() {
        Ok(path)
    } else {
        bail!(
            "{name} binary not found at {} ({origin}). Build the control-plane binaries \
             with `e2e/tools/build-tools.sh` (or `make tools`).",
            path.display()
        )
    }
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

fn has_default_route() -> bool {
    let v4 = fs::read_to_string("/proc/net/route").is_ok_and(|t| {
        t.lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(1) == Some("00000000"))
    });
    // /proc/net/ipv6_route: destination and prefix length come first.
    let v6 = fs::read_to_string("/proc/net/ipv6_route").is_ok_and(|t| {
        t.lines().any(|l| {
            let mut f = l.split_whitespace();
            f.next() == Some("00000000000000000000000000000000")
                && f.next() == Some("00")
                && !l.trim_end().ends_with(" lo")
        })
    });
    v4 || v6
}

async fn openssl_genrsa(out: &Path) -> anyhow::Result<()> {
    let res = tokio::process::Command::new("openssl")
        .arg("genrsa")
        .arg("-out")
        .arg(out)
        .arg("2048")
        .stdin(Stdio::null())
        .output()
        .await;
    match res {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => bail!(
            "openssl genrsa failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "openssl is not installed; run e2e/tools/build-tools.sh (installs it) \
             or apt-get install -y openssl"
        ),
        Err(e) => Err(e).context("running openssl genrsa"),
    }
}

/// The last PEM certificate of a bundle (kube-apiserver writes its
/// self-signed serving certificate followed by the CA certificate).
fn read_serving_ca(bundle: &Path) -> anyhow::Result<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    let text =
        fs::read_to_string(bundle).with_context(|| format!("reading {}", bundle.display()))?;
    let blocks: Vec<&str> = text.split(BEGIN).skip(1).collect();
    match blocks.as_slice() {
        [_, .., ca] => Ok(format!("{BEGIN}{}\n", ca.trim_end())),
        _ => bail!(
            "{} has no CA certificate after the serving certificate",
            bundle.display()
        ),
    }
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64_decode(b64.trim())
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64, skipping invalid characters and padding.
fn base64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let Some(v) = B64.iter().position(|&x| x == c) else {
            continue;
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn client_for(url: &str, token: Option<&str>) -> anyhow::Result<kube::Client> {
    let uri: http::Uri = url.parse().with_context(|| format!("parsing {url}"))?;
    let mut config = kube::Config::new(uri);
    config.accept_invalid_certs = true;
    config.auth_info.token = token.map(|t| SecretString::from(t.to_string()));
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
        let p = free_ports::<4>().unwrap();
        for i in 0..4 {
            for j in i + 1..4 {
                assert_ne!(p[i], p[j]);
            }
        }
    }

    #[test]
    fn base64_round_trips() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        let data: Vec<u8> = (0..=255).collect();
        assert_eq!(base64_decode(&base64(&data)), data);
    }

    #[test]
    fn serving_ca_is_the_last_certificate() {
        let dir = make_temp_dir().unwrap();
        let f = dir.join("apiserver.crt");
        let leaf = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let ca = "-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n";
        fs::write(&f, format!("{leaf}{ca}")).unwrap();
        let got = read_serving_ca(&f).unwrap();
        assert_eq!(got, ca);
        assert_eq!(pem_to_der(&got), b"ABC");
        fs::write(&f, leaf).unwrap();
        assert!(read_serving_ca(&f).is_err());
        fs::remove_dir_all(dir).unwrap();
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
