//! geodb: a Kubernetes operator for PostGIS clusters.
//!
//! The reconciler is a pipeline (`controller::reconcile`): read -> validate -> build ->
//! apply -> status. Builders (`builders`) are pure; only `controller::read`,
//! `controller::apply` and `controller::status` talk to the API server.

pub mod api;
pub mod builders;
pub mod controller;
pub mod crdgen;
pub mod error;
pub mod http;
pub mod instance;
pub mod kube_client;
pub mod leader;
pub mod leftover_processes;
pub mod metrics;
pub mod names;
pub mod quantity;
