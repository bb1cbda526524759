//! One-shot Job commands, one module per command: `geodb migrate` (versioned SQL files,
//! each applied once) `geodb seed` (random test data), `geodb maintain vacuum` and
//! `geodb bench spatial` (query latencies). They share how a Job connects
//! (`connection`); each prints its result as its last stdout line.

pub mod bench_spatial;
pub mod connection;
pub mod migrate;
pub mod seed;
pub mod vacuum;
