//! `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

#[derive(Clone)]
pub struct HttpState {
    pub registry: Arc<Registry>,
    /// Set once the operator can serve (CRD present, client working).
    pub ready: Arc<AtomicBool>,
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics as the Prometheus text format (0.0.4), for clients that did not ask for
/// OpenMetrics (promtool, curl, older scrapers): a counter family is named with its
/// `_total` there, and `# EOF` and `# UNIT` do not exist (pure).
pub fn to_text_format(openmetrics: &str) -> String {
    let counters: std::collections::BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            (counters.contains(name) && !name.ends_with("_total"))
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

async fn metrics(State(state): State<HttpState>, headers: header::HeaderMap) -> impl IntoResponse {
    let mut body = String::new();
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    match encode(&mut body, &state.registry) {
        Ok(()) if openmetrics => (StatusCode::OK, [(header::CONTENT_TYPE, OPENMETRICS)], body),
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, TEXT_FORMAT)],
            to_text_format(&body),
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            "could not encode metrics".to_owned(),
        ),
    }
}

async fn ready(State(state): State<HttpState>) -> StatusCode {
    if state.ready.load(Ordering::Relaxed) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(state)
}

pub async fn serve(addr: SocketAddr, state: HttpState) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router(state)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_take_their_total_name_and_openmetrics_markers_go() {
        let om =
            "# HELP geodb_reconciliations Reconciliations.\n# TYPE geodb_reconciliations counter\n\
                  geodb_reconciliations_total 3\n# HELP geodb_up Up.\n# TYPE geodb_up gauge\n\
                  # UNIT geodb_up x\ngeodb_up 1\n# EOF\n";
        assert_eq!(
            to_text_format(om),
            "# HELP geodb_reconciliations_total Reconciliations.\n# TYPE geodb_reconciliations_total counter\n\
             geodb_reconciliations_total 3\n# HELP geodb_up Up.\n# TYPE geodb_up gauge\ngeodb_up 1\n"
        );
    }
}
