//! One-shot Job commands, one module per command: `geodb migrate` (versioned SQL files,
//! each applied once) and `geodb seed` (random test data). They share how a Job
//! connects (`connection`); each prints its result as its last stdout line.

pub mod connection;
pub mod migrate;
pub mod seed;
