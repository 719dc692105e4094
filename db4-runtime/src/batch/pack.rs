//! Bin-packing: where each new entry goes. Pure bookkeeping over blob sizes; the caller reads
//! the candidate blobs and writes the bins out.

use std::collections::BTreeSet;

/// A blob being filled: an existing one that may receive appends, or a fresh one.
pub(super) struct Bin {
    pub(super) blob: i64,
    /// Size before this call.
    pub(super) base: u64,
    /// Size after the planned appends.
    pub(super) used: u64,
    pub(super) fresh: bool,
    pub(super) append: Vec<u8>,
    pub(super) added_count: u64,
}

/// Best-fit placement of entries into blobs of at most `limit` bytes.
pub(super) struct Packer {
    limit: u64,
    next_id: i64,
    pub(super) bins: Vec<Bin>,
    /// Bins that can still take something, by size.
    open: BTreeSet<(u64, usize)>,
}

impl Packer {
    pub(super) fn new(limit: u64, next_id: i64) -> Self {
        Self { limit, next_id, bins: Vec::new(), open: BTreeSet::new() }
    }

    pub(super) fn add_existing(&mut self, blob: i64, used: u64) {
        self.open.insert((used, self.bins.len()));
        self.bins.push(Bin { blob, base: used, used, fresh: false, append: Vec::new(), added_count: 0 });
    }

    /// Appends `entry` to the fullest bin it fits in, or to a new bin; returns the bin's blob
    /// id and the entry's offset. An entry above the limit (stored under a larger earlier
    /// limit) gets a bin of its own.
    pub(super) fn place(&mut self, entry: &[u8]) -> (i64, u64) {
        let len = entry.len() as u64;
        let fit =
            self.limit.checked_sub(len).and_then(|room| self.open.range(..=(room, usize::MAX)).next_back().copied());
        let index = match fit {
            Some(key) => {
                self.open.remove(&key);
                key.1
            }
            None => {
                self.bins.push(Bin {
                    blob: self.next_id,
                    base: 0,
                    used: 0,
                    fresh: true,
                    append: Vec::new(),
                    added_count: 0,
                });
                self.next_id += 1;
                self.bins.len() - 1
            }
        };
        let bin = &mut self.bins[index];
        let pos = bin.used;
        bin.used += len;
        bin.append.extend_from_slice(entry);
        bin.added_count += 1;
        if bin.used < self.limit {
            self.open.insert((bin.used, index));
        }
        (bin.blob, pos)
    }
}
