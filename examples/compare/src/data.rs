//! The benchmark's documents: one struct, generated deterministically from a fixed seed.

use db4::Document;
use serde::{Deserialize, Serialize};

/// The seed every run starts from, so every side (and every run) sees the same data.
pub const SEED: u64 = 0x0db4_c0de_2026_0001;

/// How many tenants the documents are spread over.
pub const TENANTS: u64 = 20;

/// A user-ish record of about 830 bytes of JSON.
///
/// The attributes give the table db4 creates, which the raw side reproduces by hand: `_id`
/// (text primary key), `_doc` (the JSON), one indexed column each for `tenant`, `status`
/// and `created_at` (each index ending with `_id`), and the composite index
/// `by_tenant_status_created` over `(tenant, status, created_at desc, _id desc)`.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "docs")]
#[db4(index(name = "by_tenant_status_created", fields(tenant, status, created_at desc)))]
pub struct Doc {
    /// 16 hex digits, unique.
    #[id]
    pub id: String,
    /// `tenant-00` .. `tenant-19`.
    #[partition_key]
    pub tenant: String,
    /// A person's name.
    pub name: String,
    /// An address derived from the name.
    pub email: String,
    /// One of four states, uniformly.
    #[index]
    pub status: Status,
    /// Milliseconds since the epoch; unique and increasing with the document's position.
    #[range_index]
    pub created_at: i64,
    /// Four to eight words.
    pub title: String,
    /// About 80 words.
    pub body: String,
    /// Two to five tags.
    pub tags: Vec<String>,
    /// A counter: 0 when generated; the write benchmarks update and increment it.
    pub views: u64,
}

/// The state of a [`Doc`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Signed up, not confirmed.
    Pending,
    /// In use.
    Active,
    /// Blocked for a while.
    Suspended,
    /// Gone.
    Closed,
}

/// A key of the composite index: states sort by name.
impl db4::Ordered for Status {}

impl Status {
    /// Every state, in a fixed order.
    pub const ALL: [Status; 4] = [Status::Pending, Status::Active, Status::Suspended, Status::Closed];

    /// The value stored in the `f_status` column: the variant name, as serde writes it (and as
    /// db4 binds a unit variant).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "Pending",
            Status::Active => "Active",
            Status::Suspended => "Suspended",
            Status::Closed => "Closed",
        }
    }
}

/// The tenant name for tenant number `n`.
pub fn tenant(n: u64) -> String {
    format!("tenant-{n:02}")
}

/// A small, fast, deterministic generator (Vigna's splitmix64); no `rand` dependency needed.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// A number in `0..n` (the modulo bias is irrelevant for a benchmark).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A random element of `items`.
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// splitmix64's output function: a bijection on `u64`, so distinct inputs give distinct ids.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const FIRST: &[&str] = &[
    "Ada",
    "Alan",
    "Barbara",
    "Claude",
    "Donald",
    "Edsger",
    "Frances",
    "Grace",
    "Hedy",
    "Ivan",
    "John",
    "Katherine",
    "Leslie",
    "Margaret",
    "Niklaus",
    "Radia",
    "Shafi",
    "Tim",
    "Whitfield",
    "Yukihiro",
];
const LAST: &[&str] = &[
    "Lovelace",
    "Turing",
    "Liskov",
    "Shannon",
    "Knuth",
    "Dijkstra",
    "Allen",
    "Hopper",
    "Lamarr",
    "Sutherland",
    "Backus",
    "Johnson",
    "Lamport",
    "Hamilton",
    "Wirth",
    "Perlman",
    "Goldwasser",
    "Berners-Lee",
    "Diffie",
    "Matsumoto",
];
const DOMAINS: &[&str] = &["example.com", "example.org", "mail.test", "corp.invalid"];
const WORDS: &[&str] = &[
    "database",
    "document",
    "collection",
    "index",
    "query",
    "durable",
    "object",
    "shard",
    "replica",
    "latency",
    "throughput",
    "storage",
    "engine",
    "schema",
    "migration",
    "version",
    "conflict",
    "transaction",
    "commit",
    "rollback",
    "cursor",
    "partition",
    "tenant",
    "range",
    "filter",
    "order",
    "limit",
    "offset",
    "serialize",
    "edge",
    "worker",
    "region",
    "cache",
    "memory",
    "journal",
    "checkpoint",
    "snapshot",
    "backup",
    "restore",
    "consistency",
    "isolation",
    "atomic",
    "lock",
    "optimistic",
    "pessimistic",
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "with",
    "for",
    "on",
    "fast",
    "small",
    "typed",
    "plain",
    "struct",
    "field",
    "value",
    "column",
    "table",
    "row",
];
const TAGS: &[&str] = &[
    "alpha",
    "beta",
    "gamma",
    "delta",
    "billing",
    "support",
    "sales",
    "trial",
    "enterprise",
    "startup",
    "eu",
    "us",
    "apac",
    "priority",
    "archived",
    "beta-tester",
];

/// Appends `count` random words separated by spaces.
fn words(rng: &mut SplitMix64, count: u64, out: &mut String) {
    for i in 0..count {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(rng.pick(WORDS));
    }
}

/// The first `n` documents of the benchmark's data set; the same `n` always gives the same
/// documents.
pub fn generate(n: usize) -> Vec<Doc> {
    const BASE_MS: i64 = 1_700_000_000_000;
    let mut rng = SplitMix64::new(SEED);
    (0..n as u64)
        .map(|i| {
            let first = rng.pick(FIRST);
            let last = rng.pick(LAST);
            let mut title = String::new();
            let title_words = 4 + rng.below(5);
            words(&mut rng, title_words, &mut title);
            let mut body = String::with_capacity(640);
            let body_words = 70 + rng.below(21);
            words(&mut rng, body_words, &mut body);
            let tag_count = 2 + rng.below(4);
            Doc {
                id: format!("{:016x}", mix64(i ^ SEED)),
                tenant: tenant(rng.below(TENANTS)),
                name: format!("{first} {last}"),
                email: format!(
                    "{}.{}{}@{}",
                    first.to_lowercase(),
                    last.to_lowercase(),
                    rng.below(1000),
                    rng.pick(DOMAINS)
                ),
                status: Status::ALL[rng.below(4) as usize],
                // Unique: a 300 ms slot per document, a random point inside it.
                created_at: BASE_MS + i as i64 * 300 + rng.below(300) as i64,
                title,
                body,
                tags: (0..tag_count).map(|_| rng.pick(TAGS).to_owned()).collect(),
                views: 0,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_ids_unique() {
        let a = generate(500);
        assert_eq!(a, generate(500));
        let ids: std::collections::HashSet<&str> = a.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids.len(), a.len());
    }
}
