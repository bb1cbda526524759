//! Talking to PostgreSQL: connections with a time bound, the health probe, promotion
//! and replication slots, LSN arithmetic and SQL quoting. Every failure is a
//! [`PgError`].

pub mod admin;
pub mod connect;
pub mod lsn;
pub mod probe;
pub mod sql;

pub use connect::{connect, connect_socket, PgError, TIMEOUT};
