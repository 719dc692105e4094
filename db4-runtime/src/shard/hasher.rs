//! The hasher of the key maps (routing cache, hot-key sketch): xxh3 with a per-map seed,
//! several times faster than the default SipHash on short keys.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Builds [`KeyHasher`]s seeded from the standard library's per-process random state, so
/// that keys chosen to collide in one process do not collide in another.
#[derive(Debug, Clone)]
pub(crate) struct KeyHashBuilder {
    seed: u64,
}

impl Default for KeyHashBuilder {
    fn default() -> Self {
        KeyHashBuilder { seed: RandomState::new().hash_one(0x6462_345f_6b65_7973_u64) }
    }
}

impl BuildHasher for KeyHashBuilder {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(self.seed)
    }
}

/// xxh3 of the bytes written, each write seeded by the state so far.
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxh3_64_with_seed(bytes, self.0);
    }

    fn write_usize(&mut self, n: usize) {
        // The length prefix of a byte slice: mixed in, hashed with the bytes that follow.
        self.0 = (self.0 ^ n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
