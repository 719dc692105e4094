//! db4 on Cloudflare: a multi-tenant documents HTTP API whose storage is one Durable Object
//! per tenant, each holding typed db4 collections on its own SQLite storage.
//!
//! - [`model`]: the documents (`#[derive(Document)]`).
//! - [`api`]: the routes as plain functions over a [`db4::Db`]; they run in the Durable Object
//!   and, natively, in the conformance tests.
//! - `worker` (private): the Worker and the `TenantStore` Durable Object.
//! - `raw` (private): the same work on hand-written `SqlStorage::exec` calls, for comparison.
//!
//! Build with `worker-build --profile wasm-release`; run on workerd with `e2e.sh`.

pub mod api;
pub mod model;
mod raw;
mod worker;
