//! Shared fixtures for the db4 integration tests.
