//! What checkpoints and snapshots need of a topic: the records to move to segments, the
//! installation of the blocks written, memory given back, and the topic's snapshot encoding.

use super::*;

impl Topic {
    /// The records a checkpoint moves to segments: every live record above `flushed_seq`,
    /// and the seq up to which they are complete.
    pub fn unflushed(&self) -> (u64, Vec<Record>) {
        let start = self.slot_pos(self.flushed_seq + 1);
        let recs = self
            .mem
            .range(start..)
            .filter_map(|s| s.rec.clone())
            .collect();
        (self.head_seq, recs)
    }

    /// Installs the blocks a checkpoint wrote for this topic's records up to `flush_to`;
    /// records deleted or evicted while they were being written are accounted as such.
    pub fn install_flush(&mut self, flush_to: u64, blocks: Vec<(BlockRef, Rc<[Entry]>)>) {
        if flush_to <= self.flushed_seq {
            return;
        }
        for (mut b, entries) in blocks {
            for e in entries.iter() {
                let live = e.seq >= self.evict_floor && {
                    let i = self.slot_pos(e.seq);
                    self.mem
                        .get(i)
                        .is_some_and(|s| s.seq == e.seq && s.rec.is_some())
                };
                if !live {
                    b.live = b.live.saturating_sub(1);
                    b.live_bytes = b.live_bytes.saturating_sub(e.size);
                    if e.seq >= self.evict_floor {
                        self.deleted.insert(e.seq, e.seq);
                    }
                }
            }
            if b.live > 0 {
                self.blocks.push(b);
            }
        }
        self.flushed_seq = flush_to;
    }

    /// Replaces a run of consecutive blocks rewritten by compaction. `dropped` are the seqs
    /// left out because they were gone when the blocks were read. Returns false if the run is
    /// no longer there as it was.
    pub fn install_compacted(
        &mut self,
        old: &[BlockRef],
        new: Vec<(BlockRef, Rc<[Entry]>)>,
        dropped: &[u64],
    ) -> bool {
        let Some(first) = old.first() else {
            return false;
        };
        let Ok(i) = self
            .blocks
            .binary_search_by_key(&first.first_seq, |b| b.first_seq)
        else {
            return false;
        };
        let same = |a: &BlockRef, b: &BlockRef| a.seg == b.seg && a.offset == b.offset;
        if self.blocks.len() < i + old.len()
            || !old.iter().zip(&self.blocks[i..]).all(|(a, b)| same(a, b))
        {
            return false;
        }
        let mut fresh = Vec::with_capacity(new.len());
        for (mut b, entries) in new {
            for e in entries.iter() {
                if self.seg_gone(e.seq) {
                    b.live = b.live.saturating_sub(1);
                    b.live_bytes = b.live_bytes.saturating_sub(e.size);
                }
            }
            if b.live > 0 {
                fresh.push(b);
            }
        }
        self.blocks.splice(i..i + old.len(), fresh);
        for &s in dropped {
            self.deleted.remove(s, s);
        }
        true
    }

    /// Drops hot-tail records already in segments; returns the memory freed.
    pub fn drop_cached(&mut self) -> u64 {
        let before = self.mem_bytes;
        while let Some(s) = self.mem.front() {
            if s.seq > self.flushed_seq {
                break;
            }
            if let Some(s) = self.mem.pop_front() {
                if let Some(r) = s.rec {
                    self.mem_bytes = self.mem_bytes.saturating_sub(r.size() + SLOT_OVERHEAD);
                }
            }
        }
        self.mem_base = self.mem_base.max(self.flushed_seq + 1);
        before - self.mem_bytes
    }

    /// Gives back memory the topic no longer needs: loaded entries of blocks other than the
    /// first, and the spare capacity of its queues (with a million small topics, the
    /// capacity left behind by records moved to segments would dominate).
    pub fn trim_memory(&mut self, durable_lsn: u64) {
        for b in self.blocks.iter_mut().skip(1) {
            b.entries = None;
        }
        // Entries already durable are only looked at by the next write: drop them now.
        self.durable_seq(durable_lsn);
        let _ = self.reservation.wait_for(0, durable_lsn);
        fn fit<T>(v: &mut VecDeque<T>) {
            if v.is_empty() {
                if v.capacity() > 0 {
                    *v = VecDeque::new();
                }
            } else if v.capacity() > 2 * v.len() + 8 {
                v.shrink_to_fit();
            }
        }
        fit(&mut self.mem);
        fit(&mut self.unsynced);
        fit(&mut self.reservation.pending);
        fit(&mut self.idem_order);
        if self.blocks.capacity() > self.blocks.len() * 5 / 4 + 1 {
            self.blocks.shrink_to_fit();
        }
    }

    /// Encodes everything but the hot-tail records (those come back from the WAL).
    pub fn encode_state(&self, e: &mut Enc<'_>) {
        e.u64(self.created_lsn)
            .u64(self.head_seq)
            .u64(self.reserved_seq)
            .u64(self.count)
            .u64(self.bytes)
            .u64(self.last_ts)
            .u64(self.last_write_ts)
            .u64(self.last_read_ts)
            .u64(self.evict_floor)
            .u8(match self.evict_reason {
                None => 0,
                Some(LossReason::Cap) => 1,
                Some(LossReason::Ttl) => 2,
                Some(LossReason::Mixed) => 3,
                Some(LossReason::Restart) => 4,
            })
            .u64(self.flushed_seq);
        e.u32(self.idem_order.len() as u32);
        for (_, k) in &self.idem_order {
            let v = self.idem.get(k).copied().unwrap_or(IdemEntry {
                ts: 0,
                first_seq: 0,
                last_seq: 0,
            });
            e.bytes(k.as_bytes())
                .u64(v.ts)
                .u64(v.first_seq)
                .u64(v.last_seq);
        }
        e.u32(self.router_marks.len() as u32);
        for (k, v) in &self.router_marks {
            e.bytes(k.as_bytes()).u64(*v);
        }
        e.u32(self.blocks.len() as u32);
        for b in &self.blocks {
            b.encode(e);
        }
        e.u32(self.deleted.len() as u32);
        for (s, x) in self.deleted.ranges() {
            e.u64(s).u64(x);
        }
        // Seqs above flushed_seq (up to the head) that are gone: recovery leaves them out
        // when it puts the WAL's records back.
        let mut holes = RangeSet::default();
        let lo = self.flushed_seq.max(self.evict_floor.saturating_sub(1));
        let mut next = lo + 1;
        let start = self.slot_pos(next);
        for s in self.mem.range(start..) {
            if s.rec.is_some() {
                holes.insert(next, s.seq - 1);
                next = s.seq + 1;
            }
        }
        holes.insert(next, self.head_seq);
        e.u32(holes.len() as u32);
        for (s, x) in holes.ranges() {
            e.u64(s).u64(x);
        }
        if let Some(q) = &self.queue {
            q.encode(e, self.config.leases_durable);
        }
        // Last, so snapshots of topics without it end where they always did.
        if let Some(s) = &self.stream {
            s.encode(e);
        }
    }

    pub fn decode_state(
        d: &mut Dec<'_>,
        config: TopicConfig,
        store: Rc<Store>,
        now_ms: u64,
    ) -> Option<Topic> {
        let mut t = Topic::new(config, now_ms, store, d.u64()?);
        t.head_seq = d.u64()?;
        t.visible_seq = t.head_seq;
        t.reserved_seq = d.u64()?;
        t.reservation.durable = t.reserved_seq;
        t.count = d.u64()?;
        t.bytes = d.u64()?;
        t.last_ts = d.u64()?;
        t.last_write_ts = d.u64()?;
        t.last_read_ts = d.u64()?;
        t.evict_floor = d.u64()?;
        t.evict_reason = match d.u8()? {
            0 => None,
            1 => Some(LossReason::Cap),
            2 => Some(LossReason::Ttl),
            3 => Some(LossReason::Mixed),
            4 => Some(LossReason::Restart),
            _ => return None,
        };
        t.flushed_seq = d.u64()?;
        t.mem_base = t.flushed_seq + 1;
        for _ in 0..d.u32()? {
            let k: Box<str> = d.str()?.into();
            let v = IdemEntry {
                ts: d.u64()?,
                first_seq: d.u64()?,
                last_seq: d.u64()?,
            };
            t.idem_order.push_back((v.ts, k.clone()));
            t.idem.insert(k, v);
        }
        for _ in 0..d.u32()? {
            let k: Box<str> = d.str()?.into();
            t.router_marks.insert(k, d.u64()?);
        }
        let n = d.u32()? as usize;
        t.blocks.reserve(n.min(1 << 16));
        for _ in 0..n {
            t.blocks.push(BlockRef::decode(d)?);
        }
        for _ in 0..d.u32()? {
            let (s, x) = (d.u64()?, d.u64()?);
            t.deleted.insert(s, x);
        }
        let mut holes = RangeSet::default();
        for _ in 0..d.u32()? {
            let (s, x) = (d.u64()?, d.u64()?);
            holes.insert(s, x);
        }
        t.fill_holes = Some(holes);
        if t.queue.is_some() {
            t.queue = Some(Box::new(QueueState::decode(d)?));
        }
        if !d.is_empty() {
            t.stream = Some(Box::new(crate::stream::StreamState::decode(d)?));
        }
        Some(t)
    }
}
