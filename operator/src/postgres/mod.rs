//! Talking to PostgreSQL: connections with a time bound, the health probe, promotion
//! and replication slots, LSN arithmetic, SQL quoting and where its programs are. Every failure is a
//! [`PgError`].

pub mod admin;
pub mod connect;
pub mod extensions;
pub mod lsn;
pub mod probe;
pub mod programs;
pub mod sql;
pub mod tls;

pub use connect::{
    connect, connect_socket, connect_socket_to, connect_to, Login, PgError, TIMEOUT,
};
