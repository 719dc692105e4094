//! db4 on Cloudflare: a multi-tenant documents HTTP API whose storage is one Durable Object
//! per tenant, each holding typed db4 collections on its own SQLite storage.
//!
//! - [`model`]: the documents (`#[derive(Document)]`).
//! - [`api`]: the routes as plain functions over a [`db4::Db`]; they run in the Durable Object
//!   and, natively, in the conformance tests.
//! - [`sharded`]: tickets of many tenants over 8 shard objects, routed from the Worker by
//!   `db4::cloudflare::DurableRouter` (the same routes natively over `LocalShards`).
//! - `worker` (private): the Worker and the `TenantStore`, `ShardObject` and `Coordinator`
//!   Durable Objects.
//! - `raw` (private): the same work on hand-written `SqlStorage::exec` calls, for comparison.
//!
//! Build with `worker-build --profile wasm-release`; run on workerd with `e2e.sh`.

pub mod api;
pub mod model;
mod raw;
pub mod sharded;
mod worker;
