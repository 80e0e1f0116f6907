//! Reads: a cursor walking a topic's segment blocks and its hot tail.

use super::*;

/// What a diff read found.
pub struct ReadResult {
    pub records: Vec<Record>,
    pub next_from_seq: u64,
    pub scanned: u64,
}

/// A read in progress: records found so far and the cursor (last seq examined).
pub struct ReadState {
    pub out: Vec<Record>,
    pub next: u64,
    pub scanned: u64,
    pub limit: usize,
    pub upto: u64,
}

impl ReadState {
    pub fn new(from_seq: u64, limit: usize, upto: u64) -> Self {
        ReadState {
            out: Vec::new(),
            next: from_seq,
            scanned: 0,
            limit,
            upto,
        }
    }

    fn full(&self) -> bool {
        self.out.len() >= self.limit || self.scanned as usize >= MAX_SCAN
    }

    pub fn finish(self) -> ReadResult {
        ReadResult {
            records: self.out,
            next_from_seq: self.next,
            scanned: self.scanned,
        }
    }
}

/// Upper bound on records examined by one read, so a huge deleted range costs bounded time.
const MAX_SCAN: usize = 100_000;
/// Most blocks fetched from segments in one step of a read.
const MAX_FETCH: usize = 8;

fn skipped(r: &Record, skip_nodes: &[String]) -> bool {
    r.node
        .as_deref()
        .is_some_and(|n| skip_nodes.iter().any(|s| s == n))
}

impl Topic {
    /// Reads visible records after `from_seq` from the hot tail (tests: no segments).
    #[cfg(test)]
    pub fn read(&self, from_seq: u64, limit: usize, skip_nodes: &[String]) -> ReadResult {
        let mut st = ReadState::new(from_seq, limit, self.visible_seq);
        let _ = self.read_step(&mut st, skip_nodes);
        st.finish()
    }

    /// Advances a read through the hot tail, or returns the segment blocks to fetch before
    /// it can go on (`None` once the read is complete).
    pub fn read_step(&self, st: &mut ReadState, skip_nodes: &[String]) -> Option<Vec<BlockRef>> {
        let visible = self.visible_seq.min(st.upto);
        st.next = st.next.max(self.evict_floor.saturating_sub(1));
        if st.next >= visible {
            st.next = visible;
            return None;
        }
        if st.full() {
            return None;
        }
        let start = st.next + 1;
        if start < self.mem_base {
            let i = self.blocks.partition_point(|b| b.last_seq < start);
            let mut want = 0u64;
            let fetch: Vec<BlockRef> = self.blocks[i..]
                .iter()
                .take_while(|b| b.first_seq < self.mem_base && b.first_seq <= visible)
                .filter(|b| b.live > 0)
                .take_while(|b| {
                    let go = want < (st.limit - st.out.len()) as u64;
                    want += b.live as u64;
                    go
                })
                .take(MAX_FETCH)
                .map(|b| BlockRef {
                    entries: None,
                    ..b.clone()
                })
                .collect();
            if !fetch.is_empty() {
                return Some(fetch);
            }
            // Nothing stored between the cursor and the hot tail.
            st.next = (self.mem_base - 1).min(visible);
            if st.next >= visible {
                return None;
            }
        }
        let start = st.next + 1;
        let mut idx = self.slot_pos(start);
        loop {
            if st.full() {
                return None;
            }
            let Some(slot) = self.mem.get(idx) else {
                // Past the stored records (seqs reserved but never written).
                st.next = visible;
                return None;
            };
            if slot.seq > visible {
                st.next = st.next.max(slot.seq - 1).min(visible);
                return None;
            }
            st.scanned += 1;
            st.next = slot.seq;
            idx += 1;
            if let Some(r) = &slot.rec {
                if !skipped(r, skip_nodes) {
                    st.out.push(r.clone());
                }
            }
        }
    }

    /// Takes records fetched from segment blocks into a read. Returns false (taking nothing)
    /// if one of the blocks was replaced meanwhile (compaction), so the caller plans again.
    pub fn absorb(
        &self,
        st: &mut ReadState,
        fetched: Vec<(BlockRef, Rc<Vec<Record>>)>,
        skip_nodes: &[String],
    ) -> bool {
        let current = |b: &BlockRef| {
            self.blocks
                .binary_search_by_key(&b.first_seq, |x| x.first_seq)
                .is_ok_and(|i| self.blocks[i].seg == b.seg && self.blocks[i].offset == b.offset)
        };
        if !fetched.iter().all(|(b, _)| current(b)) {
            return false;
        }
        let visible = self.visible_seq.min(st.upto);
        for (b, recs) in fetched {
            for r in recs.iter() {
                if r.seq <= st.next {
                    continue;
                }
                if st.full() {
                    return true;
                }
                if r.seq >= self.mem_base || r.seq > visible {
                    // Nothing stored in segments between the cursor and here.
                    st.next = st.next.max((self.mem_base - 1).min(visible));
                    return true;
                }
                st.next = r.seq;
                st.scanned += 1;
                if !self.seg_gone(r.seq) && !skipped(r, skip_nodes) {
                    st.out.push(r.clone());
                }
            }
            let end = b.last_seq.min(visible).min(self.mem_base - 1);
            st.next = st.next.max(end);
        }
        true
    }
}
