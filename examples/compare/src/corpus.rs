//! The full-text benchmark's articles and queries, generated deterministically from a fixed
//! vocabulary whose words occur with a Zipf distribution, as words in real text do: the most
//! frequent words are in nearly every article, the rarest in a handful.

use crate::data::{SEED, SplitMix64, mix64};
use db4::Document;
use serde::{Deserialize, Serialize};

/// Distinct words in the vocabulary. With 100 000 articles of about 100 words, the rarest
/// word is in roughly 20 of them.
pub const VOCABULARY: usize = 50_000;

/// Tags are drawn from this many fairly common words (vocabulary ranks from [`TAG_FIRST_RANK`]).
const TAG_WORDS: usize = 1_000;
const TAG_FIRST_RANK: usize = 50;

/// An article, searched through its title (weighs twice), body and tags (1.5).
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "articles")]
pub struct Article {
    /// 16 hex digits, unique.
    #[id]
    pub id: String,
    /// Three to eight words.
    #[fts(weight = 2.0)]
    pub title: String,
    /// 50 to 150 words.
    #[fts]
    pub body: String,
    /// One to four words.
    #[fts(weight = 1.5)]
    pub tags: Vec<String>,
}

/// [`Article`] without its full-text fields: what db4 writes when there is no index to keep.
#[derive(Document, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[db4(collection = "articles")]
pub struct PlainArticle {
    #[id]
    pub id: String,
    pub title: String,
    pub body: String,
    pub tags: Vec<String>,
}

impl From<&Article> for PlainArticle {
    fn from(a: &Article) -> Self {
        Self { id: a.id.clone(), title: a.title.clone(), body: a.body.clone(), tags: a.tags.clone() }
    }
}

/// Samples ranks `0..n` with probability proportional to `1 / (rank + 1)` (Zipf, s = 1).
struct Zipf {
    /// Cumulative weights, `cdf[r]` = sum of the weights of ranks `0..=r`.
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize) -> Self {
        let mut total = 0.0;
        let cdf = (1..=n)
            .map(|r| {
                total += 1.0 / r as f64;
                total
            })
            .collect();
        Self { cdf }
    }

    fn sample(&self, rng: &mut SplitMix64) -> usize {
        let u = unit(rng) * self.cdf[self.cdf.len() - 1];
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// A uniform number in `[0, 1)`.
fn unit(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Consonant-vowel syllables. Without `c`, `e`, `l`, `v` or `y`, no word ends in a suffix the
/// Porter stemmer changes other than `-iti`, so distinct words keep distinct stems and a word's
/// frequency is its term's frequency.
const CONSONANTS: &[u8] = b"bdfgkmnprstz";
const VOWELS: &[u8] = b"aiou";

/// The word of frequency rank `rank` (0 is the most frequent): two syllables for the first
/// 48² ranks, three after, so frequent words are short as in real text.
pub fn word(rank: usize) -> String {
    let syllables = CONSONANTS.len() * VOWELS.len();
    let two = syllables * syllables;
    let (count, band, index) = if rank < two { (2, two, rank) } else { (3, two * syllables, rank - two) };
    // A fixed odd multiplier scatters neighbouring ranks over the band (a bijection), so the
    // frequent words do not all start with the same syllable.
    let mut n = (index.wrapping_mul(7_919)) % band;
    let mut out = String::with_capacity(count * 2);
    for _ in 0..count {
        let s = n % syllables;
        n /= syllables;
        out.push(CONSONANTS[s / VOWELS.len()] as char);
        out.push(VOWELS[s % VOWELS.len()] as char);
    }
    out
}

/// The vocabulary, most frequent word first.
pub fn vocabulary() -> Vec<String> {
    (0..VOCABULARY).map(word).collect()
}

fn sentence(rng: &mut SplitMix64, zipf: &Zipf, vocab: &[String], count: u64, out: &mut String) {
    for i in 0..count {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&vocab[zipf.sample(rng)]);
    }
}

/// The first `n` articles; the same `n` always gives the same articles.
pub fn articles(n: usize, vocab: &[String]) -> Vec<Article> {
    let words = Zipf::new(vocab.len());
    let tags = Zipf::new(TAG_WORDS);
    let mut rng = SplitMix64::new(SEED ^ 0x6674_7331);
    (0..n as u64)
        .map(|i| {
            let mut title = String::new();
            let title_words = 3 + rng.below(6);
            sentence(&mut rng, &words, vocab, title_words, &mut title);
            let mut body = String::with_capacity(800);
            let body_words = 50 + rng.below(101);
            sentence(&mut rng, &words, vocab, body_words, &mut body);
            let tag_count = 1 + rng.below(4);
            Article {
                id: format!("{:016x}", mix64(i ^ SEED ^ 0x6674_7331)),
                title,
                body,
                tags: (0..tag_count).map(|_| vocab[TAG_FIRST_RANK + tags.sample(&mut rng)].clone()).collect(),
            }
        })
        .collect()
}

/// `n` queries of one or two words (half each). Each word is drawn half the time by its
/// frequency (so frequent words dominate, as in query logs) and half the time uniformly from
/// the vocabulary (so most are rare).
pub fn queries(n: usize, vocab: &[String]) -> Vec<String> {
    let zipf = Zipf::new(vocab.len());
    let mut rng = SplitMix64::new(SEED ^ 0x7175_6572_7973);
    (0..n)
        .map(|_| {
            let count = 1 + rng.below(2);
            let words: Vec<&str> = (0..count)
                .map(|_| {
                    let rank =
                        if rng.below(2) == 0 { zipf.sample(&mut rng) } else { rng.below(vocab.len() as u64) as usize };
                    vocab[rank].as_str()
                })
                .collect();
            words.join(" ")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_distinct_and_generation_deterministic() {
        let vocab = vocabulary();
        let distinct: std::collections::HashSet<&String> = vocab.iter().collect();
        assert_eq!(distinct.len(), VOCABULARY);
        let a = articles(200, &vocab);
        assert_eq!(a, articles(200, &vocab));
        assert_eq!(queries(50, &vocab), queries(50, &vocab));
        let ids: std::collections::HashSet<&str> = a.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids.len(), a.len());
    }
}
