//! A set of chunk indices, kept as a cumulative prefix plus a sparse bitmap.
//!
//! Both sides need "which chunks are in": the sender for what the receiver acknowledged, the
//! receiver for what it has written. Chunk indices go up to `u32::MAX - 1`, so a flat bitmap could
//! be 512 MiB; instead everything below `cumulative` is implied, and only 4096-bit pages at or above
//! it are allocated, and freed as the prefix passes them. In a transfer that makes progress the set
//! costs a few pages around the window, whatever the file size.

use std::collections::BTreeMap;

/// Bits per page: 512 bytes, so a page is cheap to allocate and a window of thousands of chunks
/// spans only a few of them.
const PAGE_BITS: u64 = 4096;
const PAGE_WORDS: usize = (PAGE_BITS / 64) as usize;

type Page = [u64; PAGE_WORDS];

/// What one page costs in memory, roughly: its bits, its box and its B-tree slot.
pub const PAGE_COST: usize = PAGE_BITS as usize / 8 + 64;

/// A set of chunk indices (`0..u32::MAX`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkSet {
    /// Every index below this is a member. A `u64` so that "all of `0..u32::MAX`" fits.
    cumulative: u64,
    /// Bits for indices at or above `cumulative`, by page number (`index / PAGE_BITS`). A page may
    /// also hold bits below `cumulative`; those are members anyway.
    pages: BTreeMap<u64, Box<Page>>,
    /// Members at or above `cumulative`.
    extra: u64,
}

impl ChunkSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The set of all indices below `n`.
    pub fn with_prefix(n: u32) -> Self {
        Self {
            cumulative: n as u64,
            ..Self::default()
        }
    }

    /// Every index below this is a member, and this one is not (unless it is `u32::MAX`).
    pub fn cumulative(&self) -> u32 {
        self.cumulative.min(u32::MAX as u64) as u32
    }

    /// How many indices are members.
    pub fn len(&self) -> u64 {
        self.cumulative + self.extra
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, index: u32) -> bool {
        let i = index as u64;
        if i < self.cumulative {
            return true;
        }
        self.pages
            .get(&(i / PAGE_BITS))
            .is_some_and(|p| p[word_in_page(i)] & (1 << (i % 64)) != 0)
    }

    /// Adds `index`; returns whether it was new. `u32::MAX` is not a chunk index and is ignored.
    pub fn insert(&mut self, index: u32) -> bool {
        if index == u32::MAX || self.contains(index) {
            return false;
        }
        let i = index as u64;
        let page = self
            .pages
            .entry(i / PAGE_BITS)
            .or_insert_with(|| Box::new([0; PAGE_WORDS]));
        page[word_in_page(i)] |= 1 << (i % 64);
        self.extra += 1;
        if i == self.cumulative {
            self.advance();
        }
        true
    }

    /// Pages allocated now (see [`PAGE_COST`]).
    pub fn pages(&self) -> usize {
        self.pages.len()
    }

    /// Whether inserting `index` would allocate a page other than the one holding the
    /// cumulative point. (That one never counts against a memory cap: filling it is what moves
    /// the cumulative point on and frees pages.)
    pub fn would_grow(&self, index: u32) -> bool {
        let (i, page) = (index as u64, index as u64 / PAGE_BITS);
        i >= self.cumulative
            && page != self.cumulative / PAGE_BITS
            && !self.pages.contains_key(&page)
    }

    /// Adds every index below `n`.
    pub fn insert_below(&mut self, n: u32) {
        let n = n as u64;
        if n <= self.cumulative {
            return;
        }
        self.extra -= self.count_range(self.cumulative, n);
        self.cumulative = n;
        self.advance();
    }

    /// The highest member, if any.
    pub fn last(&self) -> Option<u32> {
        let in_pages = self.pages.iter().rev().find_map(|(&page, words)| {
            let (w, word) = words.iter().enumerate().rev().find(|(_, w)| **w != 0)?;
            Some(page * PAGE_BITS + w as u64 * 64 + 63 - word.leading_zeros() as u64)
        });
        let below = self.cumulative.checked_sub(1);
        in_pages.max(below).map(|i| i as u32)
    }

    /// The 64 membership bits of indices `start..start + 64`, bit `k` for index `start + k`
    /// (indices past `u32::MAX` read as absent).
    pub fn word_at(&self, start: u64) -> u64 {
        let (w, shift) = (start / 64, start % 64);
        if shift == 0 {
            self.aligned_word(w)
        } else {
            self.aligned_word(w) >> shift | self.aligned_word(w + 1) << (64 - shift)
        }
    }

    /// The first index in `from..end` that is not a member.
    pub fn next_missing(&self, from: u64, end: u64) -> Option<u64> {
        let mut i = from.max(self.cumulative);
        while i < end {
            let word = self.word_at(i);
            if word != u64::MAX {
                let found = i + word.trailing_ones() as u64;
                return (found < end).then_some(found);
            }
            i += 64;
        }
        None
    }

    /// Bits of word `w` (indices `64w..64w + 64`), with the implied prefix filled in.
    fn aligned_word(&self, w: u64) -> u64 {
        let first = w * 64;
        if first + 64 <= self.cumulative {
            return u64::MAX;
        }
        let mut bits = self
            .pages
            .get(&(first / PAGE_BITS))
            .map_or(0, |p| p[word_in_page(first)]);
        if first < self.cumulative {
            bits |= (1u64 << (self.cumulative - first)) - 1;
        }
        bits
    }

    /// Set bits in the pages for indices `from..to`.
    fn count_range(&self, from: u64, to: u64) -> u64 {
        let mut n = 0;
        for (&page, words) in self.pages.range(from / PAGE_BITS..to.div_ceil(PAGE_BITS)) {
            for (k, word) in words.iter().enumerate() {
                let first = page * PAGE_BITS + k as u64 * 64;
                let mut mask = u64::MAX;
                if first + 64 <= from || first >= to {
                    continue;
                }
                if first < from {
                    mask &= u64::MAX << (from - first);
                }
                if first + 64 > to {
                    mask &= u64::MAX >> (first + 64 - to);
                }
                n += (word & mask).count_ones() as u64;
            }
        }
        n
    }

    /// Moves `cumulative` over the members that follow it, and frees pages it has passed.
    fn advance(&mut self) {
        loop {
            let run = (self.word_at(self.cumulative)).trailing_ones() as u64;
            if run == 0 {
                break;
            }
            self.cumulative += run;
            self.extra -= run;
        }
        while let Some((&page, _)) = self.pages.first_key_value() {
            if (page + 1) * PAGE_BITS > self.cumulative {
                break;
            }
            self.pages.pop_first();
        }
    }
}

fn word_in_page(i: u64) -> usize {
    ((i % PAGE_BITS) / 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn prefix_advances_and_pages_are_freed() {
        let mut s = ChunkSet::new();
        assert!(s.insert(1));
        assert!(!s.insert(1));
        assert_eq!(s.cumulative(), 0);
        assert!(s.insert(0));
        assert_eq!(s.cumulative(), 2);
        for i in 2..10_000 {
            s.insert(i);
        }
        assert_eq!(s.cumulative(), 10_000);
        assert_eq!(s.len(), 10_000);
        assert!(s.pages.len() <= 1, "pages below the prefix are freed");
    }

    #[test]
    fn near_u32_max() {
        let mut s = ChunkSet::with_prefix(u32::MAX - 3);
        assert_eq!(
            s.next_missing(0, u32::MAX as u64),
            Some(u32::MAX as u64 - 3)
        );
        s.insert(u32::MAX - 1);
        assert_eq!(s.last(), Some(u32::MAX - 1));
        assert!(!s.insert(u32::MAX), "not a chunk index");
        s.insert(u32::MAX - 3);
        s.insert(u32::MAX - 2);
        assert_eq!(s.cumulative(), u32::MAX);
        assert_eq!(s.len(), u32::MAX as u64);
        assert_eq!(s.next_missing(0, u32::MAX as u64), None);
        assert_eq!(s.word_at(u32::MAX as u64 - 2), 0b11);
    }

    #[test]
    fn insert_below_counts_members_once() {
        let mut s = ChunkSet::new();
        s.insert(5);
        s.insert(70);
        s.insert(5000);
        s.insert_below(71);
        assert_eq!(s.len(), 72);
        assert_eq!(s.cumulative(), 71);
        assert!(s.contains(5000));
        assert_eq!(s.next_missing(60, 10_000), Some(71));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn behaves_like_a_btreeset(ops in proptest::collection::vec((0u32..20_000, any::<bool>()), 0..300)) {
            let mut s = ChunkSet::new();
            let mut model = BTreeSet::new();
            for (i, below) in ops {
                if below && i % 7 == 0 {
                    s.insert_below(i);
                    model.extend(0..i);
                } else {
                    prop_assert_eq!(s.insert(i), model.insert(i));
                }
            }
            prop_assert_eq!(s.len(), model.len() as u64);
            let cum = (0..).find(|i| !model.contains(i)).unwrap();
            prop_assert_eq!(s.cumulative(), cum);
            prop_assert_eq!(s.last(), model.last().copied());
            for start in [0u64, 1, 63, 64, 100, 4095, 4100, 19_990] {
                let mut w = 0u64;
                for k in 0..64 {
                    if model.contains(&((start + k) as u32)) { w |= 1 << k; }
                }
                prop_assert_eq!(s.word_at(start), w);
            }
            let missing = (cum as u64 + 3..30_000).find(|&i| !model.contains(&(i as u32)));
            prop_assert_eq!(s.next_missing(cum as u64 + 3, 30_000), missing);
        }
    }
}
