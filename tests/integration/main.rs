//! Integration tests for db4 on the embedded SQLite backend.
