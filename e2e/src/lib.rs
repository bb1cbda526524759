//! Test harness and end-to-end tests for geodb.

pub mod archiving;
pub mod bench;
pub mod bench_backup;
pub mod conn;
pub mod controlplane;
pub mod drill;
pub mod hostpg;
pub mod kept;
pub mod kube_util;
pub mod outage;
pub mod partition;
pub mod prometheus;
pub mod recreate;
pub mod s3;
pub mod tls;
