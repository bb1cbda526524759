//! Which PostgreSQL settings need a restart to change (`pg_settings.context` =
//! `postmaster`, PostgreSQL 15 and 17, with pg_stat_statements loaded). A change to any
//! of them rolls the instance pods, one at a time; every other change is picked up by a
//! reload (the agent sends SIGHUP when the mounted configuration changes), with no
//! restart. A name PostgreSQL does not know is reloaded too: PostgreSQL then refuses it
//! in its log and keeps running, where a restart would not come back.

/// Settings that take effect only at server start.
pub const RESTART_SETTINGS: &[&str] = &[
    "archive_mode",
    "autovacuum_freeze_max_age",
    "autovacuum_max_workers",
    "autovacuum_multixact_freeze_max_age",
    "bonjour",
    "bonjour_name",
    "cluster_name",
    "commit_timestamp_buffers",
    "config_file",
    "data_directory",
    "data_sync_retry",
    "debug_io_direct",
    "dynamic_shared_memory_type",
    "event_source",
    "external_pid_file",
    "hba_file",
    "hot_standby",
    "huge_page_size",
    "huge_pages",
    "ident_file",
    "ignore_invalid_pages",
    "jit_provider",
    "listen_addresses",
    "logging_collector",
    "max_connections",
    "max_files_per_process",
    "max_locks_per_transaction",
    "max_logical_replication_workers",
    "max_notify_queue_pages",
    "max_pred_locks_per_transaction",
    "max_prepared_transactions",
    "max_replication_slots",
    "max_wal_senders",
    "max_worker_processes",
    "min_dynamic_shared_memory",
    "multixact_member_buffers",
    "multixact_offset_buffers",
    "notify_buffers",
    "old_snapshot_threshold",
    "pg_stat_statements.max",
    "port",
    "recovery_target",
    "recovery_target_action",
    "recovery_target_inclusive",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_timeline",
    "recovery_target_xid",
    "reserved_connections",
    "serializable_buffers",
    "shared_buffers",
    "shared_memory_type",
    "shared_preload_libraries",
    "subtransaction_buffers",
    "superuser_reserved_connections",
    "trace_connection_negotiation",
    "track_activity_query_size",
    "track_commit_timestamp",
    "transaction_buffers",
    "unix_socket_directories",
    "unix_socket_group",
    "unix_socket_permissions",
    "wal_buffers",
    "wal_decode_buffer_size",
    "wal_level",
    "wal_log_hints",
];

/// A change of `name` needs a restart.
pub fn needs_restart(name: &str) -> bool {
    RESTART_SETTINGS.binary_search(&name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_sorted_and_knows_both_kinds() {
        assert!(RESTART_SETTINGS.windows(2).all(|w| w[0] < w[1]));
        assert!(needs_restart("shared_buffers"));
        assert!(needs_restart("max_connections"));
        assert!(needs_restart("pg_stat_statements.max"));
        assert!(!needs_restart("work_mem"));
        assert!(!needs_restart("synchronous_standby_names"));
        assert!(!needs_restart("wrok_mem"));
    }
}
