//! One-shot Job commands, one module per command: `geodb migrate` (versioned SQL files,
//! each applied once) `geodb seed` (random test data) and `geodb maintain vacuum`. They share how a Job
//! connects (`connection`); each prints its result as its last stdout line.

pub mod connection;
pub mod migrate;
pub mod seed;
pub mod vacuum;
