//! Every attribute and option name the derive understands, in one place.

pub const DB4: &str = "db4";
pub const ID: &str = "id";
pub const PARTITION_KEY: &str = "partition_key";
pub const FTS: &str = "fts";
pub const INDEX: &str = "index";
pub const RANGE_INDEX: &str = "range_index";
pub const VERSION: &str = "version";

pub const COLLECTION: &str = "collection";
pub const CRATE: &str = "crate";
pub const TOKENIZER: &str = "tokenizer";
pub const CHANGES: &str = "changes";
pub const WEIGHT: &str = "weight";
pub const NAME: &str = "name";
pub const FIELDS: &str = "fields";
pub const ASC: &str = "asc";
pub const DESC: &str = "desc";

pub const TOKENIZERS: [&str; 3] = ["porter", "unicode61", "trigram"];
/// What `#[db4(changes = "...")]` accepts: before- and after-images, or after-images only.
pub const CHANGE_MODES: [&str; 2] = ["full", "after"];

pub const SERDE: &str = "serde";
pub const RENAME: &str = "rename";
pub const RENAME_ALL: &str = "rename_all";
pub const SERIALIZE: &str = "serialize";
pub const SKIP: &str = "skip";
pub const SKIP_SERIALIZING: &str = "skip_serializing";
pub const FLATTEN: &str = "flatten";
