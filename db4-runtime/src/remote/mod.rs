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
//! In a Worker the client is `db4::cloudflare::WorkerShards` (one Durable
//! Object per shard, `idFromName`); natively [`LocalShards`] runs the same servers in process,
//! so everything but the network is tested by `cargo test`. See `docs/cloudflare.md`.

pub mod protocol;

mod local;
mod router;
mod server;

pub use local::LocalShards;
pub use protocol::{PROTOCOL_VERSION, ShardMap};
pub use router::{BoxFuture, DurableQuery, DurableRouter, MAX_IN_FLIGHT, ShardClient};
pub use server::{CoordinatorServer, ShardServer};
