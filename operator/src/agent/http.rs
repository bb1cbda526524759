//! The agent's HTTP endpoint: what the data volume holds, so that the operator can choose
//! the primary of a GeoDatabase created over volumes whose last primary nobody recorded;
//! and `/metrics` (see `exporter`).

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use tracing::warn;

use super::exporter::{self, Exporter, Target};
use super::settings::Settings;
use crate::pod_contract::{VolumeReport, AGENT_PORT, METRICS_PATH, MONITORING_DIR, VOLUME_PATH};
use crate::postgres::lsn;

/// The report of `pg_controldata`'s output (pure).
pub fn volume_report(controldata: &str) -> VolumeReport {
    let field = |label: &str| {
        controldata
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(label))
            .map(|v| v.trim().to_owned())
    };
    let furthest = [
        field("Latest checkpoint location:"),
        field("Minimum recovery ending location:"),
    ]
    .into_iter()
    .flatten()
    .filter_map(|v| lsn::parse(&v))
    .max();
    VolumeReport {
        data: true,
        timeline: field("Latest checkpoint's TimeLineID:").and_then(|t| t.parse().ok()),
        lsn: furthest.map(lsn::format),
        state: field("Database cluster state:"),
    }
}

#[derive(Clone)]
struct Volume {
    bin: PathBuf,
    settings: Settings,
}

async fn volume(State(v): State<Volume>) -> Json<VolumeReport> {
    let report = tokio::task::spawn_blocking(move || {
        if !v.settings.has_data() {
            return VolumeReport::default();
        }
        let out = std::process::Command::new(v.bin.join("pg_controldata"))
            .arg("-D")
            .arg(&v.settings.pgdata)
            .output();
        match out {
            Ok(out) if out.status.success() => volume_report(&String::from_utf8_lossy(&out.stdout)),
            // A data directory pg_controldata cannot read: there is data, of unknown age.
            _ => VolumeReport {
                data: true,
                ..VolumeReport::default()
            },
        }
    })
    .await
    .unwrap_or_default();
    Json(report)
}

async fn metrics(State(exporter): State<Exporter>) -> String {
    exporter.page().await
}

/// Serve the endpoint in the background; a failure to listen is logged (the operator then
/// waits for this instance's report, it never guesses).
pub fn serve(settings: &Settings, bin: PathBuf) {
    let state = Volume {
        bin,
        settings: settings.clone(),
    };
    let exporter = Exporter::new(
        Target {
            socket_dir: settings.socket_dir.clone(),
            database: settings.database.clone(),
            pgdata: settings.pgdata.clone(),
        },
        std::path::Path::new(MONITORING_DIR).join(exporter::CUSTOM_QUERIES_FILE),
    );
    let app = Router::new()
        .route(VOLUME_PATH, get(volume))
        .with_state(state)
        .merge(
            Router::new()
                .route(METRICS_PATH, get(metrics))
                .with_state(exporter),
        );
    tokio::spawn(async move {
        let port = u16::try_from(AGENT_PORT).unwrap_or(8008);
        let addr = SocketAddr::from(([0, 0, 0, 0], port));
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                if let Err(error) = axum::serve(listener, app).await {
                    warn!(%error, "the agent's HTTP endpoint stopped");
                }
            }
            Err(error) => warn!(%error, %addr, "cannot serve the agent's HTTP endpoint"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_timeline_and_the_furthest_position() {
        let primary = "Database cluster state:               shut down
Latest checkpoint location:           0/5000060
Latest checkpoint's REDO location:    0/5000028
Latest checkpoint's TimeLineID:       2
Minimum recovery ending location:     0/0
";
        assert_eq!(
            volume_report(primary),
            VolumeReport {
                data: true,
                timeline: Some(2),
                lsn: Some("0/5000060".into()),
                state: Some("shut down".into()),
            }
        );
        let replica = "Database cluster state:               shut down in recovery
Latest checkpoint location:           0/4000060
Latest checkpoint's TimeLineID:       2
Minimum recovery ending location:     0/6000100
";
        assert_eq!(volume_report(replica).lsn.as_deref(), Some("0/6000100"));
    }
}
