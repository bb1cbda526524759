//! A GeoDatabase created over data volumes whose last primary nobody recorded (its former
//! self was removed without the operator's finalizer annotating them): the primary is the
//! instance whose volume holds the furthest history (timeline, then WAL position), as each
//! instance's agent reads it from `pg_controldata`. Until every agent has answered no
//! primary is chosen, and none is assumed.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::read::Observed;
use crate::pod_contract::{VolumeReport, AGENT_PORT, VOLUME_PATH};
use crate::postgres::lsn;

/// How long one agent has to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// What the volumes say about the primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Survey {
    /// The instance with the furthest history.
    Newest(String),
    /// No volume holds data: a new cluster.
    Empty,
    /// Not every agent has answered yet.
    Waiting(String),
}

/// A cleanly stopped primary reports where its shutdown checkpoint record starts; a
/// replica that replayed that record reports where it ends, a hundred-odd bytes later,
/// and nothing can follow it on the same timeline. So a stopped primary's position counts
/// this much further: more than one checkpoint record, far less than any transaction.
const SHUTDOWN_CHECKPOINT_SPAN: u64 = 1024;

/// The choice from every instance's report, `None` for one that did not answer (pure).
pub fn choose(reports: &[(String, Option<VolumeReport>)]) -> Survey {
    let silent: Vec<&str> = reports
        .iter()
        .filter(|(_, r)| r.is_none())
        .map(|(i, _)| i.as_str())
        .collect();
    if !silent.is_empty() {
        return Survey::Waiting(format!(
            "the data volumes exist but no primary is recorded on them: waiting for the agents of {} to report what their volumes hold",
            silent.join(", ")
        ));
    }
    let furthest = reports
        .iter()
        .filter_map(|(instance, r)| r.as_ref().filter(|r| r.data).map(|r| (instance, r)))
        .max_by_key(|(instance, r)| {
            let mut position = r.lsn.as_deref().and_then(lsn::parse).unwrap_or(0);
            if r.state.as_deref() == Some("shut down") {
                position = position.saturating_add(SHUTDOWN_CHECKPOINT_SPAN);
            }
            // Ties go to the first instance by name.
            (
                r.timeline.unwrap_or(0),
                position,
                std::cmp::Reverse((*instance).clone()),
            )
        });
    match furthest {
        Some((instance, _)) => Survey::Newest(instance.clone()),
        None => Survey::Empty,
    }
}

async fn ask(ip: &str) -> Option<VolumeReport> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((ip, AGENT_PORT as u16)).await?;
        let request = format!("GET {VOLUME_PATH} HTTP/1.0\r\nHost: {ip}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(ASK_TIMEOUT, exchange)
        .await
        .ok()?
        .ok()?;
    parse_response(&response)
}

/// The report in an HTTP response, if its status is 200 (pure).
fn parse_response(response: &str) -> Option<VolumeReport> {
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?;
    (status == "200")
        .then(|| serde_json::from_str(body).ok())
        .flatten()
}

/// Ask the agent of every instance what its volume holds, and choose.
pub async fn survey(observed: &Observed, instances: &[String]) -> Survey {
    let asks = instances.iter().map(|instance| async move {
        let ip = observed
            .instance_pod(instance)
            .and_then(|p| p.status.as_ref()?.pod_ip.clone());
        let report = match ip {
            Some(ip) => ask(&ip).await,
            None => None,
        };
        (instance.clone(), report)
    });
    choose(&futures::future::join_all(asks).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(timeline: u32, lsn: &str) -> Option<VolumeReport> {
        Some(VolumeReport {
            data: true,
            timeline: Some(timeline),
            lsn: Some(lsn.into()),
            state: Some("shut down".into()),
        })
    }

    fn replica_report(timeline: u32, lsn: &str) -> Option<VolumeReport> {
        Some(VolumeReport {
            state: Some("shut down in recovery".into()),
            ..report(timeline, lsn)?
        })
    }

    #[test]
    fn a_stopped_primary_is_ahead_of_the_replica_that_replayed_its_last_checkpoint() {
        // The replica's minimum recovery end is the end of the primary's shutdown
        // checkpoint record, which the primary reports by its start.
        let reports = vec![
            ("geo-1".to_owned(), report(1, "0/4000028")),
            ("geo-2".to_owned(), replica_report(1, "0/40000A0")),
        ];
        assert_eq!(choose(&reports), Survey::Newest("geo-1".into()));
        // A replica really further on (a later timeline) still wins.
        let reports = vec![
            ("geo-1".to_owned(), report(1, "0/4000028")),
            ("geo-2".to_owned(), replica_report(2, "0/3000000")),
        ];
        assert_eq!(choose(&reports), Survey::Newest("geo-2".into()));
    }

    #[test]
    fn the_furthest_history_wins_timeline_first() {
        let reports = vec![
            ("geo-1".to_owned(), report(2, "0/9000000")),
            ("geo-2".to_owned(), report(3, "0/7000000")),
            ("geo-3".to_owned(), report(3, "0/6000000")),
        ];
        assert_eq!(choose(&reports), Survey::Newest("geo-2".into()));
    }

    #[test]
    fn a_silent_agent_means_waiting_and_empty_volumes_mean_new() {
        let waiting = choose(&[
            ("geo-1".to_owned(), report(1, "0/3000000")),
            ("geo-2".to_owned(), None),
        ]);
        assert!(matches!(waiting, Survey::Waiting(m) if m.contains("geo-2")));
        let empty = choose(&[
            ("geo-1".to_owned(), Some(VolumeReport::default())),
            ("geo-2".to_owned(), Some(VolumeReport::default())),
        ]);
        assert_eq!(empty, Survey::Empty);
    }

    #[test]
    fn reads_the_report_of_an_http_1_0_or_1_1_answer() {
        let body = r#"{"data":true,"timeline":3,"lsn":"0/4115F28","state":"shut down"}"#;
        for version in ["HTTP/1.0", "HTTP/1.1"] {
            let response =
                format!("{version} 200 OK\r\ncontent-type: application/json\r\n\r\n{body}");
            assert_eq!(parse_response(&response), report(3, "0/4115F28"));
        }
        assert_eq!(parse_response("HTTP/1.1 500 Internal\r\n\r\n{}"), None);
    }

    #[test]
    fn equal_histories_go_to_the_first_instance() {
        let reports = vec![
            ("geo-1".to_owned(), report(2, "0/5000000")),
            ("geo-2".to_owned(), report(2, "0/5000000")),
        ];
        assert_eq!(choose(&reports), Survey::Newest("geo-1".into()));
    }
}
