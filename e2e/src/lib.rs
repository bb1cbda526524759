//! Test harness and end-to-end tests for geodb.

pub mod controlplane;
pub mod kube_util;
