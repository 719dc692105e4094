//! db4 on Cloudflare: a multi-tenant documents HTTP API whose storage is one Durable Object
//! per tenant, each holding typed db4 collections on its own SQLite storage.
//!
//! - [`model`]: the documents (`#[derive(Document)]`).
//! - [`api`]: the routes as plain functions over a [`db4::Db`]; they run in the Durable Object
//!   and, natively, in the conformance tests.
//! - [`sharded`]: tickets of many tenants over 8 shard objects, routed from the Worker by
//!   `db4::cloudflare::DurableRouter` (the same routes natively over `LocalShards`).
//! - [`tiered`]: readings whose old documents compact to a cold tier in R2, read back through
//!   `db4::tier::StagedStore` (natively over a memory store).
//! - `worker` (private): the Worker and the `TenantStore`, `ShardObject`, `Coordinator` and
//!   `TierObject` Durable Objects.
//! - `raw` (private): the same work on hand-written `SqlStorage::exec` calls, for comparison.
//!
//! Build with `worker-build --profile wasm-release`; run on workerd with `e2e.sh`.

pub mod api;
pub mod model;
mod raw;
pub mod sharded;
pub mod tiered;
mod worker;
