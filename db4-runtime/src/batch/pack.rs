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

#[cfg(test)]
mod tests {
    use super::Packer;

    #[test]
    fn each_entry_goes_to_the_fullest_bin_it_fits() {
        let mut packer = Packer::new(100, 7);
        packer.add_existing(1, 50);
        packer.add_existing(2, 80);
        packer.add_existing(3, 100);
        // 20 bytes fit blob 2 exactly, which then closes; blob 3 was full from the start.
        assert_eq!(packer.place(&[0; 20]), (2, 80));
        assert_eq!(packer.place(&[0; 20]), (1, 50));
        assert_eq!(packer.place(&[0; 30]), (1, 70));
        // Nothing has room for 40 bytes: a fresh bin, numbered from `next_id`.
        assert_eq!(packer.place(&[0; 40]), (7, 0));
        assert_eq!(packer.place(&[0; 60]), (7, 40));
        assert_eq!(packer.place(&[0; 1]), (8, 0));
        let bins: Vec<_> = packer.bins.iter().map(|b| (b.blob, b.base, b.used, b.fresh, b.added_count)).collect();
        assert_eq!(
            bins,
            [
                (1, 50, 100, false, 2),
                (2, 80, 100, false, 1),
                (3, 100, 100, false, 0),
                (7, 0, 100, true, 2),
                (8, 0, 1, true, 1)
            ]
        );
        assert_eq!(packer.bins[0].append.len(), 50);
    }

    #[test]
    fn an_entry_above_the_limit_gets_a_bin_of_its_own() {
        let mut packer = Packer::new(64, 1);
        assert_eq!(packer.place(&[1; 10]), (1, 0));
        assert_eq!(packer.place(&[2; 90]), (2, 0));
        assert_eq!(packer.place(&[3; 10]), (1, 10));
        assert_eq!(packer.bins[1].append, [2; 90]);
        assert_eq!(packer.bins[0].append, [[1; 10], [3; 10]].concat());
    }
}
