//! A real Prometheus (Debian's package) on the node for the cluster suite, with the
//! shipped scrape configuration (`config/monitoring/prometheus-scrape.yaml`) and alerts
//! (`config/monitoring/alerts.yaml`), answering queries on loopback.
//!
//! Debian builds Prometheus without Kubernetes discovery, so the pods are discovered
//! here: every 2 s the pods of the watched namespaces become a file of targets, one per
//! container port, labelled with the `__meta_kubernetes_pod_*` labels Kubernetes
//! discovery would give them. The shipped jobs keep their relabelling unchanged; only
//! their discovery section is replaced by that file (and the interval shortened).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_yaml::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};

use crate::kube_util::{repo_root, wait_for};

/// One sample of an instant query: its labels and value.
pub type Sample = (BTreeMap<String, String>, f64);

/// `GET path` on `addr` (HTTP/1.0: the body ends with the connection, never chunked),
/// within 10 s: the status code and the body.
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        anyhow::Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .with_context(|| format!("GET http://{addr}{path}: no answer in 10 s"))??;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET http://{addr}{path}: not HTTP: {answer:.200}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET http://{addr}{path}: no status in {head:.200}"))?;
    Ok((status, body.to_owned()))
}

/// `text` percent-encoded for a query string.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The shipped scrape jobs, each reading its targets from `targets` every `interval`.
pub fn scrape_configs(targets: &Path, interval: &str) -> anyhow::Result<Value> {
    let path = repo_root().join("config/monitoring/prometheus-scrape.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let doc: Value = serde_yaml::from_str(&text)?;
    let mut jobs = doc
        .get("scrape_configs")
        .cloned()
        .context("prometheus-scrape.yaml has no scrape_configs")?;
    for job in jobs
        .as_sequence_mut()
        .context("scrape_configs is not a list")?
    {
        let map = job.as_mapping_mut().context("a job is not a map")?;
        map.remove("kubernetes_sd_configs")
            .context("a job without kubernetes_sd_configs")?;
        map.insert("scrape_interval".into(), interval.into());
        map.insert("scrape_timeout".into(), interval.into());
        map.insert(
            "file_sd_configs".into(),
            serde_yaml::from_str(&format!(
                "[{{files: [{:?}], refresh_interval: {interval}}}]",
                targets.display().to_string()
            ))?,
        );
    }
    Ok(jobs)
}

/// A label name as Kubernetes discovery spells it (`geodb.io/cluster` ->
/// `geodb_io_cluster`).
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The targets Kubernetes pod discovery would give for `pods`: one per container port.
pub fn pod_targets(pods: &[Pod]) -> serde_json::Value {
    let mut groups = Vec::new();
    for pod in pods {
        let (Some(status), Some(spec)) = (&pod.status, &pod.spec) else {
            continue;
        };
        let Some(ip) = &status.pod_ip else { continue };
        let mut labels = BTreeMap::new();
        labels.insert(
            "__meta_kubernetes_namespace".to_owned(),
            pod.metadata.namespace.clone().unwrap_or_default(),
        );
        labels.insert(
            "__meta_kubernetes_pod_name".to_owned(),
            pod.metadata.name.clone().unwrap_or_default(),
        );
        labels.insert(
            "__meta_kubernetes_pod_phase".to_owned(),
            status.phase.clone().unwrap_or_default(),
        );
        labels.insert("__meta_kubernetes_pod_ip".to_owned(), ip.clone());
        for (k, v) in pod.metadata.labels.iter().flatten() {
            labels.insert(
                format!("__meta_kubernetes_pod_label_{}", sanitize(k)),
                v.clone(),
            );
        }
        for container in &spec.containers {
            for port in container.ports.iter().flatten() {
                let mut l = labels.clone();
                l.insert(
                    "__meta_kubernetes_pod_container_name".to_owned(),
                    container.name.clone(),
                );
                l.insert(
                    "__meta_kubernetes_pod_container_port_name".to_owned(),
                    port.name.clone().unwrap_or_default(),
                );
                l.insert(
                    "__meta_kubernetes_pod_container_port_number".to_owned(),
                    port.container_port.to_string(),
                );
                groups.push(serde_json::json!({
                    "targets": [format!("{ip}:{}", port.container_port)],
                    "labels": l,
                }));
            }
        }
    }
    serde_json::Value::Array(groups)
}

/// Write the targets of the pods of `namespaces` to `file` every 2 s (atomically: a
/// rename, so Prometheus never reads half a file).
fn discover(client: Client, namespaces: Vec<String>, file: PathBuf) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let mut pods = Vec::new();
            for ns in &namespaces {
                if let Ok(list) = Api::<Pod>::namespaced(client.clone(), ns)
                    .list(&ListParams::default())
                    .await
                {
                    pods.extend(list.items);
                }
            }
            let text = pod_targets(&pods).to_string();
            let tmp = file.with_extension("tmp");
            if std::fs::write(&tmp, text).is_ok() {
                let _ = std::fs::rename(&tmp, &file);
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    })
}

pub struct Prometheus {
    child: Child,
    discovery: tokio::task::JoinHandle<()>,
    dir: PathBuf,
    pub addr: String,
}

impl Prometheus {
    /// Start it on the pods of `namespaces` and of the operator's namespace, and wait
    /// until it is ready.
    pub async fn start(client: &Client, namespaces: &[&str]) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("geodb-e2e-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let targets = dir.join("targets.json");
        std::fs::write(&targets, "[]")?;
        let mut watched: Vec<String> = namespaces.iter().map(|n| (*n).to_owned()).collect();
        watched.push("geodb-system".to_owned());
        let discovery = discover(client.clone(), watched, targets.clone());
        let config = serde_yaml::to_value(BTreeMap::from([
            (
                "global",
                serde_yaml::from_str::<Value>("{scrape_interval: 2s, evaluation_interval: 2s}")?,
            ),
            (
                "rule_files",
                vec![repo_root()
                    .join("config/monitoring/alerts.yaml")
                    .display()
                    .to_string()]
                .into(),
            ),
            ("scrape_configs", scrape_configs(&targets, "2s")?),
        ]))?;
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, serde_yaml::to_string(&config)?)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting prometheus (Debian's package `prometheus`)")?;
        let prometheus = Self {
            child,
            discovery,
            dir,
            addr,
        };
        let ready = wait_for("Prometheus ready", Duration::from_secs(60), || async {
            let (status, _) = http_get(&prometheus.addr, "/-/ready").await.ok()?;
            (status == 200).then_some(())
        })
        .await;
        if let Err(e) = ready {
            bail!("{e}; its log:\n{}", prometheus.log());
        }
        Ok(prometheus)
    }

    /// What Prometheus logged (for a failure's diagnostics).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let (status, body) = http_get(&self.addr, path).await?;
        let answer: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("{path}: HTTP {status}: {body:.300}"))?;
        if answer["status"] != "success" {
            bail!("{path}: HTTP {status}: {}", answer);
        }
        Ok(answer["data"].clone())
    }

    /// An instant query's samples (a scalar answers as one sample without labels).
    pub async fn query(&self, promql: &str) -> anyhow::Result<Vec<Sample>> {
        let data = self
            .api(&format!("/api/v1/query?query={}", encode(promql)))
            .await?;
        let number = |v: &serde_json::Value| -> f64 {
            v[1].as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(f64::NAN)
        };
        Ok(match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|s| {
                    let labels = serde_json::from_value(s["metric"].clone()).unwrap_or_default();
                    (labels, number(&s["value"]))
                })
                .collect(),
            Some("scalar") => vec![(BTreeMap::new(), number(&data["result"]))],
            _ => vec![],
        })
    }

    /// The active alerts: name, state (`pending` or `firing`) and labels.
    pub async fn alerts(&self) -> anyhow::Result<Vec<(String, String, BTreeMap<String, String>)>> {
        let data = self.api("/api/v1/alerts").await?;
        Ok(data["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|a| {
                let labels: BTreeMap<String, String> =
                    serde_json::from_value(a["labels"].clone()).unwrap_or_default();
                let name = labels.get("alertname").cloned().unwrap_or_default();
                (
                    name,
                    a["state"].as_str().unwrap_or_default().to_owned(),
                    labels,
                )
            })
            .collect())
    }

    /// Every target's job, health and last error.
    pub async fn targets(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let data = self.api("/api/v1/targets?state=active").await?;
        Ok(data["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|t| {
                (
                    t["labels"]["job"].as_str().unwrap_or_default().to_owned(),
                    t["health"].as_str().unwrap_or_default().to_owned(),
                    format!(
                        "{} {}",
                        t["scrapeUrl"].as_str().unwrap_or_default(),
                        t["lastError"].as_str().unwrap_or_default()
                    ),
                )
            })
            .collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.discovery.abort();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `promtool check metrics` on a page: the lint problems it prints, empty when none.
pub fn lint_metrics(page: &str) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("promtool (Debian's package `prometheus`)")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(page.as_bytes())?;
    let out = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(String::new())
    } else {
        Ok(if said.trim().is_empty() {
            format!("promtool exited {}", out.status)
        } else {
            said
        })
    }
}
