//! Integration tests for db4 on the embedded SQLite backend.

mod change_log;
mod change_log_model;
mod change_log_props;
mod change_log_threads;
mod common;
mod crash_log;
mod crud;
mod durability;
mod errors;
mod evolution;
mod migration;
mod open_modes;
mod pipeline;
mod queries;
mod query_limits;
mod range;
mod range_indexes;
mod range_props;
mod range_standalone;
mod search;
mod search_props;
mod serde_features;
mod spans;
mod stats;
mod versioning;
mod wal_config;
