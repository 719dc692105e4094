//! Storage of documents inside one database: what each collection's table holds and how it
//! is read (`meta`, `codec`), how it follows its type's schema (`migrate`), the one write
//! pipeline every write goes through (`pipeline`), the changes it records (`change`),
//! the change log they are appended to when their unit of work commits (`outbox`), their
//! delivery to commit observers (`commit`), the counts of committed writes (`tally`), and the
//! database's secret for signing range cursors (`secret`).

pub(crate) mod change;
pub(crate) mod codec;
pub(crate) mod commit;
pub(crate) mod meta;
pub(crate) mod migrate;
pub(crate) mod outbox;
pub(crate) mod pipeline;
pub(crate) mod registry;
pub(crate) mod secret;
pub(crate) mod slot;
pub(crate) mod tally;
