//! What the operator process runs on besides the controller: leader election, the HTTP
//! endpoints (`/metrics`, `/healthz`, `/readyz`), the counting Kubernetes client and the
//! metrics registry. `main.rs` wires these and the controller together.

pub mod exposition;
pub mod http;
pub mod kube_client;
pub mod leader;
pub mod metrics;
