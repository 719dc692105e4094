//! Shards as separate objects behind a wire protocol: the Worker-side [`DurableRouter`], the
//! shard object's [`ShardServer`], the [`CoordinatorServer`] holding each collection's
//! [`ShardMap`], and the [`ShardClient`] seam between them.
//!
//! The router reuses the sharding core unchanged (the [`HashRing`](crate::shard::HashRing),
//! [`RoutingCache`](crate::shard::RoutingCache), [`plan_query`](crate::shard::plan_query) and
//! the merges); what it adds is the protocol ([`protocol`]): typed, versioned JSON requests,
//! each carrying the router's ring epoch, so a shard holding a newer ring redirects a router
//! with an old map instead of answering it.
//!
//! In a Worker the client is `WorkerShards` (feature `cloudflare`, also `db4::cloudflare`) (one Durable
//! Object per shard, `idFromName`); natively [`LocalShards`] runs the same servers in process,
//! so everything but the network is tested by `cargo test`. See `docs/cloudflare.md`.

pub mod protocol;

#[cfg(feature = "sqlite")]
mod local;
#[cfg(feature = "cloudflare")]
mod r2;
mod range;
mod router;
mod search;
mod server;
mod split;
#[cfg(feature = "cloudflare")]
mod worker;

#[cfg(feature = "sqlite")]
pub use local::LocalShards;
pub use protocol::{PROTOCOL_VERSION, ShardMap};
#[cfg(feature = "cloudflare")]
pub use r2::R2Store;
pub use range::{DurableRange, MAX_RANGE_PAGE};
pub use router::{
    BoxFuture, DurableQuery, DurableRouter, MAX_IN_FLIGHT, ShardClient, SplitTrigger, StreamBatch, StreamPosition,
};
pub use search::DurableSearch;
pub use server::{CoordinatorServer, ShardServer};
#[cfg(feature = "cloudflare")]
pub use worker::{COORDINATOR_NAME, WorkerShards, serve_coordinator, serve_shard, shard_object_name};
