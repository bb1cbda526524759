//! After the role labels moved, the poolers' server connections may still reach an
//! instance that no longer has the role their Service selects (a demoted primary taking
//! writes as "read-only transaction" errors, until PgBouncer's server lifetime). Each
//! pooler pod's `geodb pooler` is asked to `RECONNECT`: connections close once released,
//! and new ones follow the Service; the read-write ones, once a primary is confirmed,
//! resume when the Service reaches it (see `pooler::primary`).
//! Before a switchover the read-write poolers are paused: clients wait instead of
//! failing while the primary changes.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::names::{COMPONENT_POOLER, COMPONENT_POOLER_RO, LABEL_COMPONENT};
use crate::pooler::console::{CONTROL_PORT, PAUSE_PATH, RECONNECT_PATH};

const ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// A pause answers once transactions under way have finished (the pooler gives up
/// waiting after 5 s).
const PAUSE_TIMEOUT: Duration = Duration::from_secs(7);

/// The name, pod IP and whether it is read-write, of every running pooler pod among
/// `pods` (pure).
pub fn pooler_ips(pods: &[Pod]) -> Vec<(String, String, bool)> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let rw = match p.labels().get(LABEL_COMPONENT)?.as_str() {
                COMPONENT_POOLER => true,
                COMPONENT_POOLER_RO => false,
                _ => return None,
            };
            Some((p.name_any(), p.status.as_ref()?.pod_ip.clone()?, rw))
        })
        .collect()
}

async fn ask(ip: &str, path: &str, token: &str) -> std::io::Result<String> {
    let port = u16::try_from(CONTROL_PORT).unwrap_or(8010);
    let mut stream = tokio::net::TcpStream::connect((ip, port)).await?;
    let request = format!(
        "POST {path} HTTP/1.0\r\nHost: {ip}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned())
}

/// Ask every pooler pod to reconnect, all at once, telling the read-write ones the
/// confirmed primary (none while a failover or switchover is under way, which keeps a
/// paused pooler paused); a pod that does not answer is logged (its connections still end
/// at their lifetime).
pub async fn reconnect(pods: &[Pod], primary_host: Option<&str>, token: &str) {
    let asks = pooler_ips(pods)
        .into_iter()
        .map(|(pod, ip, rw)| async move {
            let path = match primary_host.filter(|_| rw) {
                Some(host) => format!("{RECONNECT_PATH}?primary={host}"),
                None => RECONNECT_PATH.to_owned(),
            };
            match tokio::time::timeout(ASK_TIMEOUT, ask(&ip, &path, token)).await {
                Ok(Ok(status)) if status.starts_with('2') => {
                    info!(%pod, "pooler reconnecting to the new roles")
                }
                Ok(Ok(status)) => warn!(%pod, %status, "pooler refused to reconnect"),
                Ok(Err(e)) => warn!(%pod, error = %e, "asking a pooler to reconnect"),
                Err(_) => warn!(%pod, "asking a pooler to reconnect: no answer"),
            }
        });
    futures::future::join_all(asks).await;
}

/// Pause every read-write pooler pod, all at once; how many of them are paused out of
/// how many there are (the others' clients may see the switchover as errors).
pub async fn pause(pods: &[Pod], token: &str) -> (usize, usize) {
    let rw: Vec<_> = pooler_ips(pods).into_iter().filter(|p| p.2).collect();
    let asks = rw.iter().map(|(pod, ip, _)| async move {
        match tokio::time::timeout(PAUSE_TIMEOUT, ask(ip, PAUSE_PATH, token)).await {
            Ok(Ok(status)) if status == "200" => true,
            Ok(Ok(status)) => {
                warn!(%pod, %status, "pooler not paused");
                false
            }
            Ok(Err(e)) => {
                warn!(%pod, error = %e, "asking a pooler to pause");
                false
            }
            Err(_) => {
                warn!(%pod, "asking a pooler to pause: no answer");
                false
            }
        }
    });
    let paused = futures::future::join_all(asks).await;
    (paused.iter().filter(|p| **p).count(), rw.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_live_pooler_pods_with_an_ip() {
        let pod = |name: &str, component: &str, ip: Option<&str>| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {LABEL_COMPONENT: component}},
                "status": {"podIP": ip}
            }))
            .unwrap()
        };
        let pods = [
            pod("geo-pooler-a", "pooler", Some("10.0.0.1")),
            pod("geo-pooler-ro-b", "pooler-ro", Some("10.0.0.2")),
            pod("geo-pooler-c", "pooler", None),
            pod("geo-1-0", "database", Some("10.0.0.3")),
        ];
        assert_eq!(
            pooler_ips(&pods),
            [
                ("geo-pooler-a".to_owned(), "10.0.0.1".to_owned(), true),
                ("geo-pooler-ro-b".to_owned(), "10.0.0.2".to_owned(), false)
            ]
        );
    }
}
