//! A real Prometheus (Debian's package) on the node for the cluster suite: it discovers
//! the pods through the API server with the shipped scrape configuration
//! (`config/monitoring/prometheus-scrape.yaml`, only the kubeconfig, the namespaces and a
//! short interval added), evaluates the shipped alerts (`config/monitoring/alerts.yaml`)
//! and answers queries on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_yaml::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// The shipped scrape jobs, made to reach the API server with `kubeconfig`, to discover
/// pods in `namespaces` (and the operator's in its own), every `interval`.
pub fn scrape_configs(
    kubeconfig: &Path,
    namespaces: &[&str],
    interval: &str,
) -> anyhow::Result<Value> {
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
        let operator = job["job_name"].as_str() == Some("geodb-operator");
        job["scrape_interval"] = interval.into();
        job["scrape_timeout"] = interval.into();
        for sd in job["kubernetes_sd_configs"]
            .as_sequence_mut()
            .context("a job without kubernetes_sd_configs")?
        {
            sd["kubeconfig_file"] = kubeconfig.display().to_string().into();
            let names: Vec<Value> = if operator {
                vec!["geodb-system".into()]
            } else {
                namespaces.iter().map(|n| (*n).into()).collect()
            };
            sd["namespaces"] = serde_yaml::to_value(BTreeMap::from([("names", names)]))?;
        }
    }
    Ok(jobs)
}

pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    pub addr: String,
}

impl Prometheus {
    /// Start it and wait until it is ready and has discovered at least one target.
    pub async fn start(namespaces: &[&str]) -> anyhow::Result<Self> {
        let kubeconfig = PathBuf::from(std::env::var("KUBECONFIG").context("KUBECONFIG")?);
        let dir = std::env::temp_dir().join(format!("geodb-e2e-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
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
            (
                "scrape_configs",
                scrape_configs(&kubeconfig, namespaces, "2s")?,
            ),
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
        let prometheus = Self { child, dir, addr };
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
