//! Failover drills on a real cluster, shared by the e2e suite and `make bench-failover`.
//!
//! A drill runs a writer that commits numbered rows through the `-rw` Service (and one
//! through the pooler) and records every acknowledged id, and a watcher that asks every
//! instance `pg_is_in_recovery()` the whole time. Faults are injected from the node:
//! the test runs as root on the machine that runs the kubelet, so it can signal a pod's
//! processes and enter its network namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::conn::{dial, open_verified};
use crate::kube_util::wait_for;
use anyhow::{anyhow, bail, Context as _};
use geodb::agent::reaper::{children_of, parse_stat};
use geodb::api::{GeoDatabase, Role};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

/// Connection details of a Service, with its ClusterIP as host (the node has no
/// cluster DNS).
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub dbname: String,
    /// The name the server's certificate is checked for, and the CA that signed it.
    pub server_name: String,
    pub ca_pem: String,
}

impl Endpoint {
    pub async fn of(
        client: &Client,
        ns: &str,
        secret: &str,
        service: &str,
    ) -> anyhow::Result<Self> {
        let secret = Api::<Secret>::namespaced(client.clone(), ns)
            .get(secret)
            .await?;
        let data = secret.data.context("secret without data")?;
        let text = |k: &str| -> anyhow::Result<String> {
            Ok(String::from_utf8(
                data.get(k).context("missing key")?.0.clone(),
            )?)
        };
        let svc = Api::<Service>::namespaced(client.clone(), ns)
            .get(service)
            .await?;
        Ok(Self {
            host: svc
                .spec
                .and_then(|s| s.cluster_ip)
                .context("service without ClusterIP")?,
            port: text("port")?.parse()?,
            user: text("user")?,
            password: text("password")?,
            dbname: text("dbname")?,
            server_name: text("host")?,
            ca_pem: text("ca.crt")?,
        })
    }

    pub async fn connect(&self, timeout: Duration) -> anyhow::Result<tokio_postgres::Client> {
        let mut config = tokio_postgres::Config::new();
        dial(&mut config, &self.host, &self.server_name);
        config
            .port(self.port)
            .user(&self.user)
            .password(&self.password)
            .dbname(&self.dbname)
            .connect_timeout(timeout);
        tokio::time::timeout(timeout, open_verified(&config, &self.ca_pem))
            .await
            .map_err(|_| anyhow!("connect to {}:{} timed out", self.host, self.port))?
    }

    /// A connection once the Service routes to a server that accepts it, within
    /// `within`: a status that says healthy can run ahead of the Service's endpoints
    /// (kube-proxy applies them a moment later) and of the readiness probe.
    pub async fn connect_served(&self, within: Duration) -> anyhow::Result<tokio_postgres::Client> {
        let last_error = Mutex::new(String::new());
        let what = format!("a connection through {}:{}", self.host, self.port);
        wait_for(&what, within, || async {
            self.connect(Duration::from_secs(5))
                .await
                .map_err(|e| {
                    if let Ok(mut last) = last_error.lock() {
                        *last = format!("{e:#}");
                    }
                })
                .ok()
        })
        .await
        .map_err(|e| {
            let last = last_error.lock().map(|l| l.clone()).unwrap_or_default();
            anyhow!("{e:#}; last error: {last}")
        })
    }
}

/// One acknowledged write.
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub id: i64,
    /// When the INSERT was sent.
    pub sent: Instant,
    /// When its acknowledgement was read.
    pub at: Instant,
}

/// An acknowledged write that is gone after a failover, timed against the fault.
#[derive(Debug, Clone, PartialEq)]
pub struct LostWrite {
    pub id: i64,
    /// Seconds from the acknowledgement to the start of the fault (negative: after it).
    pub acked_before_fault_s: f64,
    /// Whether the INSERT was sent while the old primary could still take it. A write
    /// sent after that cannot have reached it, so losing it is never acceptable.
    pub sent_while_old_primary_ran: bool,
}

/// Commits numbered rows, one at a time, and records each acknowledged id and each
/// failure time.
pub struct Writer {
    pub acks: Arc<Mutex<Vec<Ack>>>,
    pub failures: Arc<Mutex<Vec<Instant>>>,
    /// Each failure's moment and what the client saw.
    pub errors: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// `first_id` separates the ids of several writers on one table.
    pub fn start(endpoint: Endpoint, table: &str, first_id: i64, every: Duration) -> Self {
        Self::start_waiting(endpoint, table, first_id, every, Duration::from_secs(2))
    }

    /// As [`Writer::start`], a write unanswered after `answer_within` counting as failed.
    pub fn start_waiting(
        endpoint: Endpoint,
        table: &str,
        first_id: i64,
        every: Duration,
        answer_within: Duration,
    ) -> Self {
        let acks = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = watch::channel(false);
        let (acks2, failures2, table) = (acks.clone(), failures.clone(), table.to_owned());
        let errors2 = errors.clone();
        let task = tokio::spawn(async move {
            let mut client: Option<tokio_postgres::Client> = None;
            let mut id = first_id;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => return,
                }
                let note = |what: String| {
                    let now = Instant::now();
                    failures2
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(now);
                    errors2
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((now, what));
                };
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    match endpoint
                        .connect(answer_within.min(Duration::from_secs(5)))
                        .await
                    {
                        Ok(c) => client = Some(c),
                        Err(e) => {
                            note(format!("connecting: {e:#}"));
                            continue;
                        }
                    }
                }
                let Some(c) = client.as_ref() else {
                    continue;
                };
                // Simple protocol: works through PgBouncer in transaction mode.
                let statement = format!("INSERT INTO {table} (id) VALUES ({id})");
                let sent = Instant::now();
                let insert = c.simple_query(&statement);
                match tokio::time::timeout(answer_within, insert).await {
                    Ok(Ok(_)) => {
                        acks2.lock().unwrap_or_else(|e| e.into_inner()).push(Ack {
                            id,
                            sent,
                            at: Instant::now(),
                        });
                        id += 1;
                    }
                    failed => {
                        note(match failed {
                            // "db: <SQLSTATE>: " marks what a server refused, apart from lost
                            // connections.
                            Ok(Err(e)) => e
                                .as_db_error()
                                .map(|d| format!("db: {}: {}", d.code().code(), d.message()))
                                .unwrap_or_else(|| e.to_string()),
                            _ => format!("no answer within {answer_within:?}"),
                        });
                        client = None;
                        // The id may or may not have committed; it is never reused.
                        id += 1;
                    }
                }
            }
        });
        Self {
            acks,
            failures,
            errors,
            stop,
            task,
        }
    }

    /// What the client saw at each failure from `from` on.
    pub fn errors_after(&self, from: Instant) -> Vec<(Instant, String)> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(at, _)| *at >= from)
            .cloned()
            .collect()
    }

    pub fn acks(&self) -> Vec<Ack> {
        self.acks.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn failures(&self) -> Vec<Instant> {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Time from `fault` to the first acknowledgement after the first failure that
    /// followed it (a write acknowledged just before the fault took effect does not
    /// count as recovery). `None` when no failure was seen: no downtime.
    pub fn recovery_after(&self, fault: Instant) -> Option<Duration> {
        let first_failure = self.failures().into_iter().find(|t| *t >= fault)?;
        self.acks()
            .into_iter()
            .find(|a| a.at > first_failure)
            .map(|a| a.at - fault)
    }

    /// Longest gap between two acknowledgements from the last one before `from` on.
    pub fn longest_pause_after(&self, from: Instant) -> Duration {
        let all: Vec<Instant> = self.acks().into_iter().map(|a| a.at).collect();
        let start = all.iter().rposition(|t| *t < from).unwrap_or(0);
        all[start..]
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }

    pub async fn stop(self) -> Vec<Ack> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.acks.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Asks every instance whether it accepts writes, every 100 ms, and records every
/// moment two did.
pub struct Watcher {
    pub violations: Arc<Mutex<Vec<String>>>,
    pub rounds: Arc<Mutex<u64>>,
    /// When each pod was first seen accepting writes.
    pub first_writable: Arc<Mutex<BTreeMap<String, Instant>>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    pub fn start(client: Client, ns: &str, cluster: &str, superuser_password: Superuser) -> Self {
        let violations = Arc::new(Mutex::new(Vec::new()));
        let rounds = Arc::new(Mutex::new(0));
        let first_writable = Arc::new(Mutex::new(BTreeMap::new()));
        let (stop, mut stopped) = watch::channel(false);
        let (v2, r2, w2) = (violations.clone(), rounds.clone(), first_writable.clone());
        let pods: Api<Pod> = Api::namespaced(client, ns);
        let selector = format!("geodb.io/cluster={cluster},app.kubernetes.io/component=database");
        let task = tokio::spawn(async move {
            let mut connections: BTreeMap<String, (String, tokio_postgres::Client)> =
                BTreeMap::new();
            let mut addresses: BTreeMap<String, String> = BTreeMap::new();
            let mut refreshed = Instant::now() - Duration::from_secs(10);
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => return,
                }
                if refreshed.elapsed() > Duration::from_millis(500) {
                    if let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await {
                        addresses = list
                            .items
                            .iter()
                            .filter_map(|p| {
                                Some((p.name_any(), p.status.as_ref()?.pod_ip.clone()?))
                            })
                            .collect();
                    }
                    refreshed = Instant::now();
                }
                let probes = addresses.iter().map(|(pod, ip)| {
                    let kept = connections.remove(pod);
                    let (pod, ip, password) = (pod.clone(), ip.clone(), superuser_password.clone());
                    async move {
                        let client = match kept {
                            Some((kept_ip, c)) if kept_ip == ip && !c.is_closed() => Some(c),
                            _ => superuser(&ip, &password).await.ok(),
                        };
                        let Some(client) = client else {
                            return (pod, ip, None, None);
                        };
                        let asked = tokio::time::timeout(
                            Duration::from_millis(500),
                            client.query_one("SELECT pg_is_in_recovery()", &[]),
                        )
                        .await;
                        match asked {
                            Ok(Ok(row)) => {
                                let in_recovery: bool = row.get(0);
                                (pod, ip, Some(client), Some(!in_recovery))
                            }
                            _ => (pod, ip, None, None),
                        }
                    }
                });
                let results = futures::future::join_all(probes).await;
                let mut writable = Vec::new();
                for (pod, ip, client, answer) in results {
                    if let Some(client) = client {
                        connections.insert(pod.clone(), (ip, client));
                    }
                    if answer == Some(true) {
                        w2.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(pod.clone())
                            .or_insert_with(Instant::now);
                        writable.push(pod);
                    }
                }
                *r2.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                if writable.len() > 1 {
                    v2.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!("writable at once: {}", writable.join(", ")));
                }
            }
        });
        Self {
            violations,
            rounds,
            first_writable,
            stop,
            task,
        }
    }

    /// When `pod` was first seen accepting writes.
    pub fn first_writable(&self, pod: &str) -> Option<Instant> {
        self.first_writable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(pod)
            .copied()
    }

    /// Stop, and return every violation seen and how many rounds ran.
    pub async fn stop(self) -> (Vec<String>, u64) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let violations = self
            .violations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let rounds = *self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        (violations, rounds)
    }
}

/// The superuser's password and the cluster's CA.
#[derive(Clone)]
pub struct Superuser {
    pub password: String,
    pub ca_pem: String,
}

/// A superuser connection to an instance's pod IP. The certificate is checked for
/// `localhost`, a name every instance's certificate holds (the pod IP is not one).
pub async fn superuser(ip: &str, login: &Superuser) -> anyhow::Result<tokio_postgres::Client> {
    Endpoint {
        host: ip.to_owned(),
        port: 5432,
        user: "postgres".into(),
        password: login.password.clone(),
        dbname: "postgres".into(),
        server_name: "localhost".into(),
        ca_pem: login.ca_pem.clone(),
    }
    .connect(Duration::from_millis(800))
    .await
}

/// The superuser's password and the CA of `cluster`, from their Secrets.
pub async fn superuser_password(
    client: &Client,
    ns: &str,
    cluster: &str,
) -> anyhow::Result<Superuser> {
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    let key = |secret: Secret, key: &str| -> anyhow::Result<String> {
        let data = secret.data.context("no data")?;
        Ok(String::from_utf8(
            data.get(key)
                .with_context(|| format!("no {key}"))?
                .0
                .clone(),
        )?)
    };
    Ok(Superuser {
        password: key(
            secrets.get(&format!("{cluster}-superuser")).await?,
            "password",
        )?,
        ca_pem: key(
            secrets.get(&format!("{cluster}-server-tls")).await?,
            "ca.crt",
        )?,
    })
}

pub async fn pod_ip(client: &Client, ns: &str, pod: &str) -> anyhow::Result<String> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .get(pod)
        .await?
        .status
        .and_then(|s| s.pod_ip)
        .context("pod without IP")
}

/// Host PIDs of the postmaster of a pod and of its parent, `geodb instance`: the
/// `postgres` process whose parent is `geodb`, with the pod's name and namespace in its
/// environment.
pub fn postmaster_pid(ns: &str, pod: &str) -> anyhow::Result<(i32, i32)> {
    let want_name = format!("POD_NAME={pod}");
    let want_ns = format!("POD_NAMESPACE={ns}");
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "postgres" {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        let has = |want: &str| vars.contains(&want.as_bytes());
        if !(has(&want_name) && has(&want_ns)) {
            continue;
        }
        let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| parse_stat(&stat))
            .map_or(0, |stat| stat.parent);
        let parent = std::fs::read_to_string(format!("/proc/{ppid}/comm")).unwrap_or_default();
        if parent.trim() == "geodb" {
            return Ok((pid, ppid));
        }
    }
    bail!("no postmaster found for pod {ns}/{pod}")
}

/// Whether process `pid` has exited (gone, or a zombie nobody reaped).
fn exited(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| parse_stat(&stat))
        .is_none_or(|stat| stat.state == 'Z')
}

/// Wait until every process in `pids` has exited; returns when that was seen. Polls
/// every millisecond: the moment bounds which writes the old primary may have taken.
async fn all_exited(pids: &[i32], timeout: Duration) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let alive: Vec<i32> = pids.iter().copied().filter(|p| !exited(*p)).collect();
        if alive.is_empty() {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("processes {alive:?} still running {timeout:?} after the kill");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Zombie children of `pid`: exited processes it never reaped.
pub fn zombies_under(pid: i32) -> Vec<i32> {
    children_of(pid)
        .into_iter()
        .filter(|p| p.state == 'Z')
        .map(|p| p.pid)
        .collect()
}

pub fn sigkill(pid: i32) -> anyhow::Result<()> {
    // SAFETY: kill(2) with a valid signal number.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        bail!("kill {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Drop all traffic (but loopback) in the network namespace of `pid`; `false` heals it.
pub fn network_cut(pid: i32, cut: bool) -> anyhow::Result<()> {
    let action = if cut { "-I" } else { "-D" };
    for rule in [
        vec!["INPUT", "!", "-i", "lo", "-j", "DROP"],
        vec!["OUTPUT", "!", "-o", "lo", "-j", "DROP"],
    ] {
        let status = std::process::Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-n", "iptables", "-w", action])
            .args(&rule)
            .status()
            .context("running nsenter iptables")?;
        if !status.success() {
            bail!("iptables {action} {rule:?} in the netns of {pid} failed: {status}");
        }
    }
    Ok(())
}

/// Current view of a GeoDatabase.
pub async fn geodatabase(client: &Client, ns: &str, name: &str) -> anyhow::Result<GeoDatabase> {
    Ok(Api::<GeoDatabase>::namespaced(client.clone(), ns)
        .get(name)
        .await?)
}

pub fn primary_of(db: &GeoDatabase) -> Option<String> {
    db.status.as_ref()?.current_primary.clone()
}

/// Every instance is reachable, the primary is confirmed, and every replica streams and
/// serves reads.
pub fn healthy(db: &GeoDatabase, instances: usize) -> bool {
    let Some(status) = db.status.as_ref() else {
        return false;
    };
    status.current_primary.is_some()
        && status.target_primary == status.current_primary
        && status.instances.len() == instances
        && status.instances.iter().all(|i| {
            i.ready
                && i.reachable
                && (i.role == Role::Primary
                    || (i.streaming == Some(true) && i.serving_reads == Some(true)))
        })
}

pub async fn wait_healthy(
    client: &Client,
    ns: &str,
    name: &str,
    instances: usize,
    timeout: Duration,
) -> anyhow::Result<GeoDatabase> {
    wait_for(
        &format!("{ns}/{name}: every instance streaming, one confirmed primary"),
        timeout,
        || async {
            let db = geodatabase(client, ns, name).await.ok()?;
            healthy(&db, instances).then_some(db)
        },
    )
    .await
}

/// Wait until a different instance than `old` is the confirmed primary, and `old` is
/// back as a streaming replica.
pub async fn wait_failed_over(
    client: &Client,
    ns: &str,
    name: &str,
    old: &str,
    instances: usize,
    timeout: Duration,
) -> anyhow::Result<GeoDatabase> {
    wait_for(
        &format!("{ns}/{name}: failed over from {old}, {old} back as a replica"),
        timeout,
        || async {
            let db = geodatabase(client, ns, name).await.ok()?;
            (primary_of(&db).as_deref() != Some(old) && healthy(&db, instances)).then_some(db)
        },
    )
    .await
}

/// Wait until `old` is the confirmed primary again after a crash of its postmaster
/// (`killed`): a new postmaster runs in its pod and every instance is healthy.
pub async fn wait_recovered_in_place(
    client: &Client,
    ns: &str,
    name: &str,
    old: &str,
    killed: Option<i32>,
    instances: usize,
    timeout: Duration,
) -> anyhow::Result<GeoDatabase> {
    let pod = format!("{old}-0");
    wait_for(
        &format!("{ns}/{name}: {old} restarted in place and still the primary"),
        timeout,
        || async {
            let restarted = postmaster_pid(ns, &pod).is_ok_and(|(pid, _)| Some(pid) != killed);
            let db = geodatabase(client, ns, name).await.ok()?;
            (restarted && primary_of(&db).as_deref() == Some(old) && healthy(&db, instances))
                .then_some(db)
        },
    )
    .await
}

/// From now until the pod `name` (the one there now) is gone from the API; polled every
/// 100 ms, for at most two minutes.
async fn watch_pod_gone(
    client: &Client,
    ns: &str,
    name: &str,
) -> anyhow::Result<tokio::task::JoinHandle<Option<Duration>>> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let uid = pods.get(name).await?.metadata.uid;
    let name = name.to_owned();
    let started = Instant::now();
    Ok(tokio::spawn(async move {
        while started.elapsed() < Duration::from_secs(120) {
            match pods.get_opt(&name).await {
                Ok(Some(pod)) if pod.metadata.uid == uid => {}
                Ok(_) => return Some(started.elapsed()),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }))
}

/// Pods (by name) behind a Service right now, from its EndpointSlices.
pub async fn service_pods(
    client: &Client,
    ns: &str,
    service: &str,
) -> anyhow::Result<BTreeSet<String>> {
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await?;
    Ok(slices
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .filter_map(|e| e.target_ref.as_ref()?.name.clone())
        .collect())
}

pub async fn delete_pod(client: &Client, ns: &str, pod: &str) -> anyhow::Result<()> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .delete(pod, &DeleteParams::default())
        .await?;
    Ok(())
}

/// Make the operator exit right after it commits a new target primary (`enabled`), or
/// not; waits for the rollout.
pub async fn operator_failpoint(client: &Client, enabled: bool) -> anyhow::Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "geodb-system");
    let value = if enabled {
        "exit-after-failover-begin"
    } else {
        ""
    };
    // Applied under a field manager of its own: applying without the variable removes it.
    let container = if enabled {
        serde_json::json!({"name": "operator", "env": [{"name": "GEODB_FAILPOINT", "value": value}]})
    } else {
        serde_json::json!({"name": "operator"})
    };
    deployments
        .patch(
            "geodb-operator",
            &PatchParams::apply("geodb-e2e-failpoint").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "geodb-operator", "namespace": "geodb-system"},
                "spec": {"template": {"spec": {"containers": [container]}}},
            })),
        )
        .await?;
    wait_for(
        "operator rollout with the failpoint setting",
        Duration::from_secs(180),
        || async {
            let d = deployments.get("geodb-operator").await.ok()?;
            let status = d.status?;
            let generation = d.metadata.generation?;
            (status.observed_generation == Some(generation)
                && status.updated_replicas == d.spec.as_ref()?.replicas
                && status.available_replicas == d.spec.as_ref()?.replicas
                && status.replicas == d.spec?.replicas)
                .then_some(())
        },
    )
    .await?;
    // And a new pod leads: faults injected before that would meet no operator.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "geodb-system");
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "geodb-system");
    wait_for(
        "a current operator pod holding the leader Lease",
        Duration::from_secs(120),
        || async {
            let holder = leases
                .get("geodb-operator-leader")
                .await
                .ok()?
                .spec?
                .holder_identity?;
            let pod = pods.get(&holder).await.ok()?;
            let env = pod
                .spec?
                .containers
                .first()?
                .env
                .clone()
                .unwrap_or_default();
            let set = env
                .iter()
                .find(|e| e.name == "GEODB_FAILPOINT")
                .and_then(|e| e.value.clone())
                .unwrap_or_default();
            let current = set == value;
            (current && pod.metadata.deletion_timestamp.is_none()).then_some(())
        },
    )
    .await
}

/// Ids acknowledged by `acks` that the table does not hold.
pub async fn missing_ids(
    endpoint: &Endpoint,
    table: &str,
    acks: &[Ack],
) -> anyhow::Result<Vec<i64>> {
    // The service may have no ready endpoint for a moment after a recovery (the kubelet's
    // readiness probe lags the database), so the read waits for one, with a deadline.
    let last_error = Mutex::new(String::new());
    let read = wait_for(
        &format!(
            "a read of {table} through {}:{}",
            endpoint.host, endpoint.port
        ),
        Duration::from_secs(60),
        || async {
            let result = async {
                let client = endpoint.connect(Duration::from_secs(5)).await?;
                Ok::<_, anyhow::Error>(
                    client
                        .query(&format!("SELECT id FROM {table}"), &[])
                        .await?,
                )
            }
            .await;
            result
                .map_err(|e| {
                    if let Ok(mut last) = last_error.lock() {
                        *last = format!("{e:#}");
                    }
                })
                .ok()
        },
    )
    .await;
    let rows = read.map_err(|e| {
        let last = last_error.lock().map(|l| l.clone()).unwrap_or_default();
        anyhow!("{e}; last error: {last}")
    })?;
    let present: BTreeSet<i64> = rows.iter().map(|r| r.get::<_, i64>(0)).collect();
    Ok(acks
        .iter()
        .map(|a| a.id)
        .filter(|id| !present.contains(id))
        .collect())
}

/// The faults a drill injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    DeletePod,
    /// SIGKILL of the postmaster: the agent restarts it in place (crash recovery), with
    /// no failover and no acknowledged commit lost.
    KillPostmaster,
    NetworkCut,
    /// The primary's pod deleted with the operator set to exit right after it chose the
    /// new primary: the restarted operator must finish the failover.
    OperatorKilled,
    Switchover,
}

impl Fault {
    pub const ALL: [Fault; 5] = [
        Fault::DeletePod,
        Fault::KillPostmaster,
        Fault::NetworkCut,
        Fault::OperatorKilled,
        Fault::Switchover,
    ];

    /// A new primary takes over after this fault (else the old one recovers in place).
    pub fn fails_over(self) -> bool {
        self != Fault::KillPostmaster
    }

    pub fn name(self) -> &'static str {
        match self {
            Fault::DeletePod => "delete_pod",
            Fault::KillPostmaster => "kill_postmaster",
            Fault::NetworkCut => "network_cut",
            Fault::OperatorKilled => "operator_killed",
            Fault::Switchover => "switchover",
        }
    }
}

/// What one drill saw.
#[derive(Clone, Debug)]
pub struct DrillReport {
    pub fault: Fault,
    pub old_primary: String,
    pub new_primary: String,
    /// Fault -> first acknowledged write after the outage, through `-rw` and the pooler.
    pub rto_rw: Option<Duration>,
    pub rto_pooler: Option<Duration>,
    /// Longest gap between two acknowledged writes through `-rw` after the fault.
    pub write_pause: Duration,
    /// The same through the pooler (a switchover pauses it).
    pub pooler_pause: Duration,
    /// What pooled writes saw fail after the fault.
    pub pooler_errors: Vec<String>,
    /// Pooled writes refused as "read-only" after writes through the pooler recovered.
    pub pooler_read_only_after_rto: usize,
    /// Moments two instances accepted writes at once (must be empty).
    pub violations: Vec<String>,
    pub watcher_rounds: u64,
    /// Acknowledged writes missing afterwards.
    pub missing: Vec<LostWrite>,
    /// From the fault to the moment the old primary could take no more writes: every
    /// process of the killed server exited, or the network cut was in place.
    pub old_primary_stopped_after: Option<Duration>,
    /// From the deletion of the old primary's pod to its removal from the API (a stop
    /// that honours the stop signal takes seconds; one that does not, the whole grace
    /// period).
    pub old_pod_gone_after: Option<Duration>,
    /// Exited processes left unreaped in the old primary's container after recovery.
    pub zombies_left: Vec<i32>,
    pub acknowledged: usize,
    pub lost_bytes_reported: Option<i64>,
    pub failovers_before: i32,
    pub failovers_after: i32,
    pub timeline_before: Option<i64>,
    pub timeline_after: Option<i64>,
}

/// The cluster a drill runs on.
pub struct Target {
    pub client: Client,
    pub ns: String,
    pub name: String,
    pub instances: usize,
}

impl Target {
    pub async fn prepare_tables(&self) -> anyhow::Result<()> {
        let rw = Endpoint::of(
            &self.client,
            &self.ns,
            &format!("{}-app-rw", self.name),
            &format!("{}-rw", self.name),
        )
        .await?;
        rw.connect(Duration::from_secs(5))
            .await?
            .batch_execute("CREATE TABLE IF NOT EXISTS drill (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
                            CREATE TABLE IF NOT EXISTS filler (id bigint, pad text)")
            .await?;
        Ok(())
    }

    /// Run one drill: writers and watcher on, inject `fault`, wait until a new primary
    /// serves and the old one streams as a replica, then collect the evidence.
    pub async fn drill(
        &self,
        fault: Fault,
        id_base: i64,
        timeout: Duration,
    ) -> anyhow::Result<DrillReport> {
        let (client, ns, name) = (&self.client, self.ns.as_str(), self.name.as_str());
        let before = wait_healthy(client, ns, name, self.instances, timeout).await?;
        let old = primary_of(&before).context("no primary")?;
        let old_pod = format!("{old}-0");
        let status_before = before.status.clone().unwrap_or_default();
        if fault == Fault::OperatorKilled {
            operator_failpoint(client, true).await?;
        }
        let password = superuser_password(client, ns, name).await?;
        let rw = Endpoint::of(client, ns, &format!("{name}-app-rw"), &format!("{name}-rw")).await?;
        let pooler = Endpoint::of(
            client,
            ns,
            &format!("{name}-app-pooler"),
            &format!("{name}-pooler"),
        )
        .await?;
        let watcher = Watcher::start(client.clone(), ns, name, password.clone());
        let writer = Writer::start(rw.clone(), "drill", id_base, Duration::from_millis(20));
        // A paused pooler holds writes for the switchover: waited for, not failed.
        let pooled = Writer::start_waiting(
            pooler,
            "drill",
            id_base + 5_000_000,
            Duration::from_millis(20),
            Duration::from_secs(15),
        );
        wait_for(
            "writes flowing through -rw and the pooler",
            Duration::from_secs(60),
            || async { (writer.acks().len() >= 20 && pooled.acks().len() >= 20).then_some(()) },
        )
        .await?;

        let switchover_target = before.status.as_ref().and_then(|s| {
            s.instances
                .iter()
                .find(|i| i.name != old)
                .map(|i| i.name.clone())
        });
        // Find the processes before the clock starts: scanning /proc takes a while on a
        // busy node, and writes acknowledged meanwhile would look as if they followed the
        // fault.
        let (postmaster, instance_pid) = match fault {
            Fault::KillPostmaster | Fault::NetworkCut => {
                let (postmaster, instance) = postmaster_pid(ns, &old_pod)?;
                (Some(postmaster), Some(instance))
            }
            Fault::DeletePod | Fault::OperatorKilled | Fault::Switchover => (None, None),
        };
        let old_server: Vec<i32> = postmaster
            .map(|pm| {
                std::iter::once(pm)
                    .chain(children_of(pm).into_iter().map(|c| c.pid))
                    .collect()
            })
            .unwrap_or_default();
        let fault_at = Instant::now();
        let mut cut_pid = None;
        let mut pod_gone = None;
        match (fault, postmaster, instance_pid) {
            (Fault::DeletePod | Fault::OperatorKilled, _, _) => {
                delete_pod(client, ns, &old_pod).await?;
                pod_gone = Some(watch_pod_gone(client, ns, &old_pod).await?);
            }
            (Fault::KillPostmaster, Some(pid), _) => sigkill(pid)?,
            (Fault::NetworkCut, _, Some(pid)) => {
                network_cut(pid, true)?;
                cut_pid = Some(pid);
            }
            (Fault::Switchover, _, _) => {
                let target = switchover_target
                    .clone()
                    .context("no replica to switch over to")?;
                Api::<GeoDatabase>::namespaced(client.clone(), ns)
                    .patch(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(serde_json::json!({"spec": {"primary": target}})),
                    )
                    .await?;
            }
            _ => bail!("no process found for {old_pod}"),
        }
        // The last moment the old primary could take a write: when the last process of
        // the killed server exited (a backend that has not yet noticed the postmaster's
        // death still commits what its client sends), or when the cut was in place.
        let old_primary_stopped_at = match fault {
            Fault::KillPostmaster => Some(all_exited(&old_server, Duration::from_secs(10)).await?),
            Fault::NetworkCut => Some(Instant::now()),
            Fault::DeletePod | Fault::OperatorKilled | Fault::Switchover => None,
        };
        // The network comes back once another instance is the primary.
        let outcome = async {
            if let Some(pid) = cut_pid {
                wait_for(
                    "a new primary while the old one is cut off",
                    timeout,
                    || async {
                        let db = geodatabase(client, ns, name).await.ok()?;
                        let status = db.status?;
                        (status.current_primary.as_deref() != Some(old.as_str())
                            && status.target_primary == status.current_primary)
                            .then_some(())
                    },
                )
                .await?;
                network_cut(pid, false)?;
            }
            if fault.fails_over() {
                wait_failed_over(client, ns, name, &old, self.instances, timeout).await
            } else {
                wait_recovered_in_place(client, ns, name, &old, postmaster, self.instances, timeout)
                    .await
            }
        }
        .await;
        if let Some(pid) = cut_pid.filter(|_| outcome.is_err()) {
            let _ = network_cut(pid, false);
        }
        if fault == Fault::OperatorKilled {
            operator_failpoint(client, false).await?;
        }
        let after = outcome?;
        // Writes flow again through both paths before the evidence is collected.
        let recovered_at = Instant::now();
        wait_for(
            "writes acknowledged after recovery",
            Duration::from_secs(60),
            || async {
                let fresh =
                    |w: &Writer| w.acks().iter().filter(|a| a.at > recovered_at).count() >= 5;
                (fresh(&writer) && fresh(&pooled)).then_some(())
            },
        )
        .await?;
        let rto_rw = writer.recovery_after(fault_at);
        let rto_pooler = pooled.recovery_after(fault_at);
        let write_pause = writer.longest_pause_after(fault_at);
        let pooler_pause = pooled.longest_pause_after(fault_at);
        let pooled_errors = pooled.errors_after(fault_at);
        let pooler_read_only_after_rto = pooled_errors
            .iter()
            .filter(|(at, what)| {
                rto_pooler.is_some_and(|rto| *at > fault_at + rto) && what.contains("read-only")
            })
            .count();
        let pooler_errors = pooled_errors.into_iter().map(|(_, what)| what).collect();
        let mut acks = writer.stop().await;
        acks.extend(pooled.stop().await);
        let (violations, watcher_rounds) = watcher.stop().await;
        let missing_ids = missing_ids(&rw, "drill", &acks).await?;
        let missing = acks
            .iter()
            .filter(|a| missing_ids.contains(&a.id))
            .map(|a| LostWrite {
                id: a.id,
                acked_before_fault_s: if a.at <= fault_at {
                    (fault_at - a.at).as_secs_f64()
                } else {
                    -(a.at - fault_at).as_secs_f64()
                },
                sent_while_old_primary_ran: old_primary_stopped_at.is_none_or(|t| a.sent <= t),
            })
            .collect();
        let status_after = after.status.clone().unwrap_or_default();
        let old_pod_gone_after = match pod_gone {
            Some(task) => task.await.ok().flatten(),
            None => None,
        };
        Ok(DrillReport {
            fault,
            old_primary: old,
            new_primary: primary_of(&after).unwrap_or_default(),
            rto_rw,
            rto_pooler,
            write_pause,
            pooler_pause,
            pooler_errors,
            pooler_read_only_after_rto,
            violations,
            watcher_rounds,
            missing,
            old_primary_stopped_after: old_primary_stopped_at.map(|t| t - fault_at),
            old_pod_gone_after,
            zombies_left: instance_pid.map(zombies_under).unwrap_or_default(),
            acknowledged: acks.len(),
            lost_bytes_reported: status_after
                .last_failover
                .as_ref()
                .and_then(|f| f.lost_bytes),
            failovers_before: status_before.failovers,
            failovers_after: status_after.failovers,
            timeline_before: status_before.timeline,
            timeline_after: status_after.timeline,
        })
    }

    /// Ask for a switchover to `target` and expect it refused with `reason`: the
    /// `PrimaryTransition` condition and an Event say so, and the primary stays. The request
    /// is withdrawn afterwards.
    pub async fn refused_switchover(
        &self,
        target: &str,
        reason: &str,
        primary: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let (client, ns, name) = (&self.client, self.ns.as_str(), self.name.as_str());
        let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
        let request = |value: serde_json::Value| serde_json::json!({"spec": {"primary": value}});
        // A value is acted on once: asking again for the instance an earlier switchover
        // went to needs the request withdrawn (and that seen) first.
        let db = api.get(name).await?;
        let handled = db
            .status
            .as_ref()
            .and_then(|s| s.handled_primary_request.clone());
        if db.spec.primary.as_deref() == Some(target) || handled.as_deref() == Some(target) {
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(request(serde_json::Value::Null)),
            )
            .await?;
            wait_for("the earlier request withdrawn", timeout, || async {
                let status = api.get(name).await.ok()?.status?;
                status.handled_primary_request.is_none().then_some(())
            })
            .await?;
        }
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(request(serde_json::json!(target))),
        )
        .await?;
        let outcome = wait_for(
            &format!("switchover to {target} refused with {reason}"),
            timeout,
            || async {
                let db = api.get(name).await.ok()?;
                let status = db.status?;
                let refused = status.conditions.iter().any(|c| {
                    c.type_ == "PrimaryTransition"
                        && c.reason == reason
                        && c.message.contains("nothing was changed")
                });
                (refused && status.handled_primary_request.as_deref() == Some(target))
                    .then_some(status)
            },
        )
        .await;
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(request(serde_json::Value::Null)),
        )
        .await?;
        let status = outcome?;
        if status.current_primary.as_deref() != Some(primary)
            || status.target_primary.as_deref() != Some(primary)
        {
            bail!(
                "a refused switchover changed the primary: {:?} / {:?}",
                status.current_primary,
                status.target_primary
            );
        }
        let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await?;
        if !events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some(reason))
        {
            bail!("no {reason} Event");
        }
        Ok(())
    }

    /// Pause replay on a replica, write past `maxLagBytes`: the replica must leave the
    /// `-ro` Service; resume: it must come back. Returns (time to leave, time to return).
    pub async fn lagging_replica(
        &self,
        timeout: Duration,
    ) -> anyhow::Result<(Duration, Duration, String)> {
        let (client, ns, name) = (&self.client, self.ns.as_str(), self.name.as_str());
        let db = wait_healthy(client, ns, name, self.instances, timeout).await?;
        let status = db.status.context("no status")?;
        let primary = status.current_primary.clone().context("no primary")?;
        let replica = status
            .instances
            .iter()
            .find(|i| i.name != primary)
            .context("no replica")?
            .name
            .clone();
        let replica_pod = format!("{replica}-0");
        let ro = format!("{name}-ro");
        // The status can say it serves reads a moment before the Service's endpoints do.
        wait_for(
            &format!("{replica_pod} in {ro} before the drill"),
            timeout,
            || async {
                service_pods(client, ns, &ro)
                    .await
                    .ok()?
                    .contains(&replica_pod)
                    .then_some(())
            },
        )
        .await?;
        let password = superuser_password(client, ns, name).await?;
        let replica_sql = superuser(&pod_ip(client, ns, &replica_pod).await?, &password).await?;
        replica_sql
            .batch_execute("SELECT pg_wal_replay_pause()")
            .await?;
        let rw = Endpoint::of(client, ns, &format!("{name}-app-rw"), &format!("{name}-rw")).await?;
        let max_lag = db.spec.replication.max_lag_bytes;
        // Enough WAL to be well past maxLagBytes.
        let rows = (max_lag / 500).max(1000) * 2;
        rw.connect(Duration::from_secs(5))
            .await?
            .batch_execute(&format!("INSERT INTO filler SELECT g, repeat(md5(g::text), 16) FROM generate_series(1, {rows}) g"))
            .await?;
        let written = Instant::now();
        let left = wait_for(&format!("{replica_pod} out of {ro}"), timeout, || async {
            (!service_pods(client, ns, &ro)
                .await
                .ok()?
                .contains(&replica_pod))
            .then_some(())
        })
        .await
        .map(|()| written.elapsed());
        // A switchover to the lagging replica is refused and changes nothing.
        let refused = match &left {
            Ok(_) => {
                self.refused_switchover(&replica, "SwitchoverTargetLagging", &primary, timeout)
                    .await
            }
            Err(_) => Ok(()),
        };
        replica_sql
            .batch_execute("SELECT pg_wal_replay_resume()")
            .await?;
        let left = left?;
        refused?;
        let resumed = Instant::now();
        wait_for(&format!("{replica_pod} back in {ro}"), timeout, || async {
            service_pods(client, ns, &ro)
                .await
                .ok()?
                .contains(&replica_pod)
                .then_some(())
        })
        .await?;
        let back = resumed.elapsed();
        let still = geodatabase(client, ns, name).await?;
        if primary_of(&still).as_deref() != Some(primary.as_str()) {
            bail!("a lagging replica must not cause a failover");
        }
        Ok((left, back, replica))
    }
}
