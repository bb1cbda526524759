//! geodb: a Kubernetes operator for PostGIS clusters.
//!
//! | module | what |
//! |---|---|
//! | `api` | the `GeoDatabase` API types and their schema |
//! | `controller` | the reconciler: read -> validate -> build -> apply -> status |
//! | `builders` | pure functions from a `Cluster` to the objects it should have |
//! | `agent` | `geodb instance`, the manager of PostgreSQL inside each database pod |
//! | `pooler` | `geodb pooler`, PgBouncer's supervisor in each pooler pod |
//! | `jobs` | one-shot Job commands: `geodb migrate`, `geodb seed` |
//! | `pod_contract` | every name the instance StatefulSet and the agent share |
//! | `archive`, `backup` | WAL archiving, base backups and restores in S3 |
//! | `postgres` | connections, the health probe, promotion, slots, LSNs, quoting |
//! | `runtime` | leader election, HTTP endpoints, the Kubernetes client, metrics |
//! | `names` | names and labels of owned objects |
//! | `certs` | each GeoDatabase's CA and server certificate |
//! | `error`, `quantity`, `crdgen` | errors, quantity parsing, the CRD files |

// A function longer than a screen (clippy.toml: 80 lines) is split by what it does.
#![deny(clippy::too_many_lines)]

pub mod agent;
pub mod api;
pub mod archive;
pub mod backup;
pub mod builders;
pub mod certs;
pub mod controller;
pub mod crdgen;
pub mod error;
pub mod jobs;
pub mod names;
pub mod pod_contract;
pub mod pooler;
pub mod postgres;
pub mod quantity;
pub mod runtime;
