//! A Bloom filter over contact ids, so a page's lookup skips the large level of the id index
//! for ids it surely does not hold (docs/performance.md, "Round 7"). In a first pass nearly
//! every id is new, and at a million contacts nearly every probe of `contact_ids` for one read
//! a page the cache did not hold. Only false positives are allowed: an id the filter wrongly
//! says is absent would be numbered twice, so every id that can reach `contact_ids` is added
//! before it is written (see `PageConnection`).

/// Filter bits per id it is sized for; with [`PROBES`] probes, about 1 false positive in 400.
const BITS_PER_ID: usize = 16;

/// Bits set and tested per id.
const PROBES: usize = 4;

pub(super) struct IdFilter {
    bits: Vec<u64>,
    /// Ids added, and the number the filter was sized for: past it, false positives grow.
    held: usize,
    capacity: usize,
}

impl IdFilter {
    /// An empty filter sized for `capacity` ids.
    pub(super) fn with_capacity(capacity: usize) -> Self {
        let words = (capacity.max(1) * BITS_PER_ID)
            .div_ceil(64)
            .next_power_of_two();
        Self {
            bits: vec![0; words],
            held: 0,
            capacity,
        }
    }

    pub(super) fn insert(&mut self, id: &str) {
        for bit in self.positions(id) {
            self.bits[bit / 64] |= 1 << (bit % 64);
        }
        self.held += 1;
    }

    /// False only for an id never inserted.
    pub(super) fn may_hold(&self, id: &str) -> bool {
        (self.positions(id).into_iter()).all(|bit| self.bits[bit / 64] & (1 << (bit % 64)) != 0)
    }

    /// Whether it holds more ids than it was sized for.
    pub(super) fn is_full(&self) -> bool {
        self.held > self.capacity
    }

    /// Double hashing (Kirsch and Mitzenmacher) of one XXH3-128 digest.
    fn positions(&self, id: &str) -> [usize; PROBES] {
        let digest = xxhash_rust::xxh3::xxh3_128(id.as_bytes());
        let (h1, h2) = (digest as u64, (digest >> 64) as u64 | 1);
        let mask = (self.bits.len() * 64 - 1) as u64;
        std::array::from_fn(|i| (h1.wrapping_add((i as u64).wrapping_mul(h2)) & mask) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every id inserted is held, however full the filter.
        #[test]
        fn no_false_negatives(ids in proptest::collection::vec(".{0,24}", 0..400), capacity in 1usize..100) {
            let mut filter = IdFilter::with_capacity(capacity);
            for id in &ids {
                filter.insert(id);
            }
            for id in &ids {
                prop_assert!(filter.may_hold(id));
            }
        }
    }

    #[test]
    fn false_positives_are_rare_within_capacity() {
        let mut filter = IdFilter::with_capacity(10_000);
        for n in 0..10_000 {
            filter.insert(&format!("held-{n}"));
        }
        assert!(!filter.is_full());
        let wrong = (0..10_000)
            .filter(|n| filter.may_hold(&format!("absent-{n}")))
            .count();
        // About 1 in 400 expected; a broken hash or mask gives far more.
        assert!(wrong < 100, "{wrong} false positives in 10,000");
    }
}
