//! One conformance suite, two backends.
//!
//! Every scenario in [`scenarios`] runs twice: `native::*` calls the app's handlers in-process
//! over db4's embedded SQLite (part of `cargo test --workspace`), and `workerd::*` sends the
//! same requests over HTTP to the wasm build served by real workerd, on Durable Object
//! storage. The `workerd` tests are ignored by a plain `cargo test` (they need a server):
//! `e2e.sh` builds the worker, starts workerd, sets `DB4_WORKERD_URL` and runs them with
//! `--ignored`; run that way without the variable, they fail.

mod client;
mod scenarios;
mod sharded;
mod split;
mod stream;
mod target;
mod tiers;
mod workerd_only;

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        /// The scenarios on db4's native SQLite backend, in-process.
        mod native {
            $(
                #[test]
                fn $name() {
                    crate::scenarios::$name(&crate::target::Native::new());
                }
            )*
        }

        /// The scenarios over HTTP against workerd (`DB4_WORKERD_URL`).
        mod workerd {
            $(
                #[test]
                #[ignore = "needs the app on workerd: run by examples/worker-app/e2e.sh"]
                fn $name() {
                    crate::scenarios::$name(&crate::target::Http::required());
                }
            )*
        }
    };
}

suite!(
    routing,
    article_crud,
    error_statuses,
    occ_conflict,
    cas_and_increment,
    queries,
    transfer_with_savepoint,
    nested_rollback,
    touch_transaction,
    tenants_are_isolated,
    large_integers,
    hostile_input,
    none_semantics,
    statement_limits,
    schema_evolution,
    batch_savepoint_rollback,
    batch_transaction_commits,
    db_stats,
    change_log,
    change_log_rollbacks,
    change_consumers,
    change_log_truncated,
    change_long_poll,
    search_ranking,
    search_follows_writes,
    search_hostile_queries,
    range_paging,
    range_cursors_refused,
    range_under_writes,
    range_standalone_index,
    warm_tier,
    sharded_crud,
    sharded_queries,
    sharded_search,
    change_stream,
);

macro_rules! tier_suite {
    ($($name:ident),* $(,)?) => {
        /// The tier scenarios natively: the cold store a memory store behind `StagedStore`.
        mod native_tiers {
            $(
                #[test]
                fn $name() {
                    crate::tiers::$name(&crate::target::Native::new());
                }
            )*
        }

        /// The tier scenarios over HTTP against miniflare (`DB4_MINIFLARE_URL`): R2, the
        /// Cache API and Durable Objects from a real local implementation.
        mod miniflare {
            $(
                #[test]
                #[ignore = "needs the app on miniflare: run by examples/worker-app/e2e.sh"]
                fn $name() {
                    crate::tiers::$name(&crate::target::Http::miniflare());
                }
            )*
        }
    };
}

tier_suite!(cold_tier, cold_tier_damage, warm_tier_bound);
