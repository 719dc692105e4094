//! The documents the app stores: articles, accounts, transfers between accounts, the
//! notifications a transfer may leave for its recipient, and players (optional fields, for the
//! query routes).

use db4::Document;
use serde::{Deserialize, Serialize};

/// Where an article is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Status {
    /// Being written (the default).
    #[default]
    Draft,
    /// Visible to readers.
    Published,
    /// Withdrawn.
    Archived,
}

impl Status {
    /// Parses the name used in JSON and query strings (`Draft`, `Published`, `Archived`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Draft" => Some(Status::Draft),
            "Published" => Some(Status::Published),
            "Archived" => Some(Status::Archived),
            _ => None,
        }
    }
}

/// Statuses sort by name in an index (`Archived < Draft < Published`), byte by byte.
impl db4::Ordered for Status {}

/// An article of one tenant (the README's document). `by_status_created` lists one status's
/// articles newest first (`GET /articles/range?index=by_status_created&prefix=Draft`).
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "articles")]
#[db4(index(name = "by_status_created", fields(status, created_at desc)))]
pub struct Article {
    /// The article's id, unique within its tenant.
    #[id]
    #[serde(default)]
    pub id: String,
    /// The tenant owning the article; set from the request path.
    #[partition_key]
    #[serde(default)]
    pub tenant_id: String,
    /// The title.
    #[fts(weight = 2.0)]
    pub title: String,
    /// The text.
    #[fts]
    #[serde(default)]
    pub body: String,
    /// Free-form tags.
    #[fts(weight = 1.5)]
    #[serde(default)]
    pub tags: Vec<String>,
    /// Draft, published or archived.
    #[index]
    #[serde(default)]
    pub status: Status,
    /// Creation time, seconds since the Unix epoch.
    #[range_index]
    #[serde(default)]
    pub created_at: i64,
    /// The optimistic-locking version: send back the one you read when updating.
    #[version]
    #[serde(default)]
    pub version: u64,
    /// How often the article was read.
    #[serde(default)]
    pub views: i64,
}

/// A bank-style account whose balance moves only through transfers and deposits.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "accounts")]
pub struct Account {
    /// The account's id.
    #[id]
    pub id: String,
    /// Who owns it.
    #[index]
    #[serde(default)]
    pub owner: String,
    /// The balance in the smallest currency unit; never negative.
    #[serde(default)]
    pub balance: i64,
    /// How many notifications the account received.
    #[serde(default)]
    pub notifications: i64,
    /// The optimistic-locking version.
    #[version]
    #[serde(default)]
    pub version: u64,
}

/// A committed transfer between two accounts.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "transfers")]
pub struct Transfer {
    /// The transfer's id, chosen by the client: a transfer id is used once.
    #[id]
    pub id: String,
    /// The debited account.
    #[index]
    pub from: String,
    /// The credited account.
    #[index]
    pub to: String,
    /// The amount moved.
    pub amount: i64,
    /// Whether the recipient got a notification.
    pub notified: bool,
}

/// A message left for an account's owner.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "notifications")]
pub struct Notification {
    /// The notification's id (a client-chosen idempotency key).
    #[id]
    pub id: String,
    /// The account it is for.
    #[index]
    pub account: String,
    /// The message.
    pub text: String,
}

/// A player of a game, for the query routes: every field but the id is optional, so that they
/// show how `None` compares. `name` and `team` are left out of the stored JSON when `None` (a
/// missing key), `score` and `rank` are stored as JSON null; queries treat both as `None`.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "players")]
pub struct Player {
    /// The player's id.
    #[id]
    pub id: String,
    /// The player's name (an equality index).
    #[index]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The player's score (a range index).
    #[range_index]
    #[serde(default)]
    pub score: Option<i64>,
    /// The player's team (not indexed: read from the JSON document).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// The player's rank (not indexed).
    #[serde(default)]
    pub rank: Option<i64>,
}

/// Two deploys of one collection, `jobs`, for the schema-evolution scenario: what an older
/// binary stored must survive a newer one, and a newer one must not reinterpret it.
pub mod evolution {
    use db4::Document;
    use serde::{Deserialize, Serialize};

    /// The first deploy's job.
    #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
    #[db4(collection = "jobs")]
    pub struct JobV1 {
        /// The job's id.
        #[id]
        pub id: String,
        /// Its priority (a range index).
        #[range_index]
        pub prio: i64,
        /// A field the second deploy no longer declares.
        pub title: String,
    }

    /// The second deploy's job: `title` gone, an owner added, and `#[version]` added without
    /// any serde attribute.
    #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
    #[db4(collection = "jobs")]
    pub struct JobV2 {
        /// The job's id.
        #[id]
        pub id: String,
        /// Its priority.
        #[range_index]
        pub prio: i64,
        /// Who works on it.
        #[serde(default)]
        pub owner: String,
        /// The optimistic-locking counter.
        #[version]
        pub version: u64,
    }

    /// A deploy that changed the indexed `prio` to text: refused when it opens the collection.
    #[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
    #[db4(collection = "jobs")]
    pub struct JobRetyped {
        /// The job's id.
        #[id]
        pub id: String,
        /// Its priority, now text.
        #[range_index]
        pub prio: String,
    }
}

/// The benchmark's billing twin of [`Article`]: the same document with the layout of the
/// hand-written `raw_articles` table (three indexes: tenant, status, creation time; no
/// full-text fields, no composite index), so that the rows written per insert compare like
/// with like. `POST /t/{tenant}/twins` inserts one and answers the rows it cost.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "article_twins")]
pub struct ArticleTwin {
    /// As [`Article::id`].
    #[id]
    #[serde(default)]
    pub id: String,
    /// As [`Article::tenant_id`].
    #[index]
    #[serde(default)]
    pub tenant_id: String,
    /// As [`Article::title`].
    pub title: String,
    /// As [`Article::body`].
    #[serde(default)]
    pub body: String,
    /// As [`Article::tags`].
    #[serde(default)]
    pub tags: Vec<String>,
    /// As [`Article::status`].
    #[index]
    #[serde(default)]
    pub status: Status,
    /// As [`Article::created_at`].
    #[range_index]
    #[serde(default)]
    pub created_at: i64,
    /// As [`Article::version`].
    #[version]
    #[serde(default)]
    pub version: u64,
    /// As [`Article::views`].
    #[serde(default)]
    pub views: i64,
}
