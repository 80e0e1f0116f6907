//! A set of seqs as disjoint inclusive ranges (a topic's delete set, snapshot holes).

use std::collections::BTreeMap;

/// A set of seqs kept as disjoint inclusive ranges.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RangeSet(BTreeMap<u64, u64>);

impl RangeSet {
    pub fn contains(&self, seq: u64) -> bool {
        self.0
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &end)| end >= seq)
    }

    pub fn insert(&mut self, from: u64, to: u64) {
        if from > to {
            return;
        }
        let (mut lo, mut hi) = (from, to);
        // Merge with every range touching [lo - 1, hi + 1].
        let touching: Vec<(u64, u64)> = self
            .0
            .range(..=hi.saturating_add(1))
            .rev()
            .take_while(|(_, &e)| e.saturating_add(1) >= lo)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.0.remove(&s);
            lo = lo.min(s);
            hi = hi.max(e);
        }
        self.0.insert(lo, hi);
    }

    pub fn remove(&mut self, from: u64, to: u64) {
        if from > to {
            return;
        }
        let hit: Vec<(u64, u64)> = self
            .0
            .range(..=to)
            .rev()
            .take_while(|(_, &e)| e >= from)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in hit {
            self.0.remove(&s);
            if s < from {
                self.0.insert(s, from - 1);
            }
            if e > to {
                self.0.insert(to + 1, e);
            }
        }
    }

    /// How many ranges.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().map(|(&s, &e)| (s, e))
    }
}
