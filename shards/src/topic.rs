//! One topic's state machine: records, head and floors, deletes, caps, idempotency keys.
//!
//! Everything here is deterministic given the sequence of operations, so the live write path
//! and WAL replay share it: the shard encodes an operation, queues it in the WAL and applies it
//! here; recovery decodes the same operation and applies it again.

use crate::codec::{Dec, Enc};
use crate::config::{Discard, Durability, TopicConfig, TopicType};
use crate::event::Event;
use crate::queue::QueueState;
use crate::segment::{BlockRef, Entry, Store};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

/// A record as stored. Payload bytes are shared with readers without copying.
#[derive(Clone, Debug)]
pub struct Record {
    pub seq: u64,
    pub ts: u64,
    pub node: Option<Arc<str>>,
    pub tag: Option<Arc<str>>,
    pub data: Arc<[u8]>,
    pub meta: Option<Arc<[u8]>>,
    /// How many routers this record has passed through (stops forwarding loops).
    pub hops: u8,
}

impl Record {
    pub fn size(&self) -> u64 {
        (self.data.len() + self.meta.as_ref().map_or(0, |m| m.len())) as u64
    }
}

/// A record as written, before it has a seq.
#[derive(Clone, Debug)]
pub struct NewRecord {
    pub node: Option<Arc<str>>,
    pub tag: Option<Arc<str>>,
    pub data: Arc<[u8]>,
    pub meta: Option<Arc<[u8]>>,
    pub hops: u8,
}

impl NewRecord {
    pub fn size(&self) -> u64 {
        (self.data.len() + self.meta.as_ref().map_or(0, |m| m.len())) as u64
    }
}

/// The tag language of record deletes and router filters.
#[derive(Clone, Debug, PartialEq)]
pub enum TagMatch {
    Eq(String),
    /// Everything starting with this prefix (`"prefix*"`).
    Prefix(String),
}

impl TagMatch {
    pub fn matches(&self, tag: Option<&str>) -> bool {
        match (self, tag) {
            (_, None) => false,
            (TagMatch::Eq(x), Some(t)) => t == x,
            (TagMatch::Prefix(p), Some(t)) => t.starts_with(p.as_str()),
        }
    }
}

/// Why records were lost involuntarily.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossReason {
    Cap,
    Ttl,
    Mixed,
    Restart,
}

impl LossReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LossReason::Cap => "cap",
            LossReason::Ttl => "ttl",
            LossReason::Mixed => "mixed",
            LossReason::Restart => "restart",
        }
    }
    fn merge(old: Option<Self>, new: Self) -> Self {
        match old {
            None => new,
            Some(o) if o == new => o,
            Some(_) => LossReason::Mixed,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct IdemEntry {
    pub ts: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// One slot of the hot tail: a record, or `None` once it was deleted.
#[derive(Clone, Debug)]
struct Slot {
    seq: u64,
    rec: Option<Record>,
}

/// Memory accounted per record held in the hot tail, beyond its payload.
pub const SLOT_OVERHEAD: u64 = 128;

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

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().map(|(&s, &e)| (s, e))
    }
}

pub struct Topic {
    pub config: TopicConfig,
    store: Rc<Store>,
    /// LSN of the operation that created this instance of the topic; replay uses it to tell
    /// a recreated topic's records from its predecessor's.
    pub created_lsn: u64,
    /// The hot tail: records from `mem_base` on, in seq order (seqs never written are absent).
    /// Memory is authoritative for seqs `>= mem_base`; older ones live in segment blocks.
    mem: VecDeque<Slot>,
    mem_base: u64,
    /// Payload plus overhead of the hot tail.
    pub mem_bytes: u64,
    /// Every live record with a seq `<= flushed_seq` is in a segment block.
    pub flushed_seq: u64,
    /// The sparse index of the records in segments, in seq order.
    pub blocks: Vec<BlockRef>,
    /// Deleted seqs among the records in segments (dropped from here when compaction drops
    /// the record itself or eviction passes it).
    pub deleted: RangeSet,
    /// During recovery: seqs above `flushed_seq` the snapshot knew as gone.
    pub fill_holes: Option<RangeSet>,
    /// The last assigned seq.
    pub head_seq: u64,
    /// The last seq readers may see (an `fsync` topic's records become visible once synced).
    pub visible_seq: u64,
    /// The highest seq reserved for non-`fsync` topics (its frame may still be in flight).
    pub reserved_seq: u64,
    pub reservation: Reservation,
    pub count: u64,
    pub bytes: u64,
    pub last_ts: u64,
    pub last_write_ts: u64,
    pub last_read_ts: u64,
    /// First seq not lost to eviction or expiry; 0 when nothing was lost.
    pub evict_floor: u64,
    pub evict_reason: Option<LossReason>,
    idem: HashMap<Box<str>, IdemEntry>,
    idem_order: VecDeque<(u64, Box<str>)>,
    /// Non-`fsync` appends not yet known durable: (WAL lsn, first seq), oldest first.
    pub unsynced: VecDeque<(u64, u64)>,
    /// Exactly-once routers: the last source seq each router has landed here.
    pub router_marks: HashMap<Box<str>, u64>,
    /// Woken whenever records become visible (long-polls, watchers).
    pub changed: Rc<Event>,
    /// A queue's leases and delivery counts (`type: "queue"` only).
    pub queue: Option<Box<QueueState>>,
}

/// Seqs reserved ahead of the head of a non-`fsync` topic, so that seqs acknowledged before a
/// crash are never handed out again even if their frames never reached the disk: an append
/// is acknowledged only once a reservation covering its seqs is durable.
pub struct Reservation {
    /// How far ahead to reserve; doubles whenever an append had to wait for a reservation.
    pub window: u64,
    /// Reservation frames not yet known durable: (lsn, upto), oldest first.
    pub pending: VecDeque<(u64, u64)>,
    /// The highest seq covered by a durable reservation.
    pub durable: u64,
}

impl Default for Reservation {
    fn default() -> Self {
        Reservation {
            window: 1024,
            pending: VecDeque::new(),
            durable: 0,
        }
    }
}

impl Reservation {
    const MAX_WINDOW: u64 = 1 << 20;

    /// The LSN to wait for before acknowledging seqs up to `last_seq`, if any.
    pub fn wait_for(&mut self, last_seq: u64, durable_lsn: u64) -> Option<u64> {
        while let Some(&(lsn, upto)) = self.pending.front() {
            if lsn > durable_lsn {
                break;
            }
            self.durable = self.durable.max(upto);
            self.pending.pop_front();
        }
        if last_seq <= self.durable {
            return None;
        }
        self.window = (self.window * 2).min(Self::MAX_WINDOW);
        self.pending
            .iter()
            .find(|(_, upto)| *upto >= last_seq)
            .map(|(lsn, _)| *lsn)
    }
}

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
    pub fn new(config: TopicConfig, now_ms: u64, store: Rc<Store>, created_lsn: u64) -> Self {
        let queue = (config.topic_type == TopicType::Queue).then(|| Box::new(QueueState::new()));
        Topic {
            queue,
            config,
            store,
            created_lsn,
            mem: VecDeque::new(),
            mem_base: 1,
            mem_bytes: 0,
            flushed_seq: 0,
            blocks: Vec::new(),
            deleted: RangeSet::default(),
            fill_holes: None,
            head_seq: 0,
            visible_seq: 0,
            reserved_seq: 0,
            reservation: Reservation::default(),
            count: 0,
            bytes: 0,
            last_ts: 0,
            last_write_ts: 0,
            last_read_ts: now_ms,
            evict_floor: 0,
            evict_reason: None,
            idem: HashMap::new(),
            idem_order: VecDeque::new(),
            router_marks: HashMap::new(),
            unsynced: VecDeque::new(),
            changed: Rc::new(Event::new()),
        }
    }

    /// Whether a record in a segment is gone (evicted, expired or deleted).
    pub fn gone_in_segment(&self, seq: u64) -> bool {
        self.seg_gone(seq)
    }

    fn seg_gone(&self, seq: u64) -> bool {
        seq < self.evict_floor || self.deleted.contains(seq)
    }

    fn slot_pos(&self, seq: u64) -> usize {
        self.mem.partition_point(|s| s.seq < seq)
    }

    fn block_pos(&self, seq: u64) -> Option<usize> {
        let i = self.blocks.partition_point(|b| b.last_seq < seq);
        (i < self.blocks.len() && self.blocks[i].first_seq <= seq).then_some(i)
    }

    /// The first live record: (seq, size, ts).
    fn front(&mut self) -> Option<(u64, u64, u64)> {
        while let Some(b) = self.blocks.first() {
            if b.first_seq >= self.mem_base {
                break;
            }
            if b.live == 0 {
                self.blocks.remove(0);
                continue;
            }
            let last = b.last_seq;
            let entries = self.store.entries(&mut self.blocks[0]);
            for e in entries.iter() {
                if e.seq >= self.mem_base {
                    break;
                }
                if !self.seg_gone(e.seq) {
                    return Some((e.seq, e.size, e.ts));
                }
            }
            if last >= self.mem_base {
                break;
            }
            // Nothing live in it after all (an unreadable block): drop it.
            let b = self.blocks.remove(0);
            self.count = self.count.saturating_sub(b.live as u64);
            self.bytes = self.bytes.saturating_sub(b.live_bytes);
        }
        self.mem
            .iter()
            .find_map(|s| s.rec.as_ref().map(|r| (r.seq, r.size(), r.ts)))
    }

    /// Removes one live record. `deleted` records a delete (kept in the delete set while the
    /// record sits in a segment); otherwise the caller moves the eviction floor past it.
    fn kill(&mut self, seq: u64, size: u64, deleted: bool) {
        if let Some(q) = &mut self.queue {
            q.forget(seq);
        }
        self.count = self.count.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(size);
        if seq >= self.mem_base {
            let i = self.slot_pos(seq);
            if let Some(s) = self.mem.get_mut(i).filter(|s| s.seq == seq) {
                if s.rec.take().is_some() {
                    self.mem_bytes = self.mem_bytes.saturating_sub(size + SLOT_OVERHEAD);
                }
            }
        }
        if seq <= self.flushed_seq {
            if let Some(i) = self.block_pos(seq) {
                let b = &mut self.blocks[i];
                b.live = b.live.saturating_sub(1);
                b.live_bytes = b.live_bytes.saturating_sub(size);
            }
            if deleted {
                self.deleted.insert(seq, seq);
            }
        }
    }

    /// Records why the eviction floor moved and forgets what lies below it.
    fn floor_moved(&mut self, reason: LossReason) {
        let floor = self.evict_floor;
        self.evict_reason = Some(LossReason::merge(self.evict_reason, reason));
        if let Some(q) = &mut self.queue {
            q.forget_below(floor);
        }
        let keep = self.blocks.partition_point(|b| b.last_seq < floor);
        self.blocks.drain(..keep);
        self.deleted.remove(0, floor.saturating_sub(1));
        self.trim_front();
    }

    /// Drops deleted and evicted slots from the front of the hot tail.
    fn trim_front(&mut self) {
        while let Some(s) = self.mem.front() {
            if s.rec.is_some() && s.seq >= self.evict_floor {
                break;
            }
            if let Some(s) = self.mem.pop_front() {
                if let Some(r) = s.rec {
                    // Below the floor: evicted with it.
                    self.count = self.count.saturating_sub(1);
                    self.bytes = self.bytes.saturating_sub(r.size());
                    self.mem_bytes = self.mem_bytes.saturating_sub(r.size() + SLOT_OVERHEAD);
                }
            }
        }
    }

    /// First live seq; `head_seq + 1` when empty.
    pub fn earliest_seq(&mut self) -> u64 {
        // A block starts with a record it holds: if that one is live, no need to load it.
        if let Some(b) = self.blocks.first() {
            if b.first_seq < self.mem_base && b.live > 0 && !self.seg_gone(b.first_seq) {
                return b.first_seq;
            }
        }
        self.front().map_or(self.head_seq + 1, |(s, _, _)| s)
    }

    /// Looks up a remembered idempotency key within the window.
    pub fn idem_lookup(&mut self, key: &str, now_ms: u64) -> Option<IdemEntry> {
        self.expire_idem(now_ms);
        self.idem.get(key).copied()
    }

    fn expire_idem(&mut self, now_ms: u64) {
        let window = self.config.idempotency_window_ms;
        while let Some((ts, _)) = self.idem_order.front() {
            if ts.saturating_add(window) >= now_ms {
                break;
            }
            if let Some((_, k)) = self.idem_order.pop_front() {
                self.idem.remove(&k);
            }
        }
    }

    /// Would appending `n` records of `bytes` overflow a `reject` cap?
    pub fn would_reject(&self, n: u64, bytes: u64) -> bool {
        let c = &self.config;
        c.discard == Discard::Reject
            && ((c.cap_records > 0 && self.count + n > c.cap_records)
                || (c.cap_bytes > 0 && self.bytes + bytes > c.cap_bytes))
    }

    /// Applies an append whose seqs start at `first_seq`.
    pub fn apply_append(
        &mut self,
        first_seq: u64,
        ts: u64,
        idem_key: Option<&str>,
        records: Vec<NewRecord>,
    ) {
        let n = records.len() as u64;
        if n == 0 || first_seq <= self.head_seq {
            return;
        }
        if self.mem.is_empty() {
            self.mem_base = self.mem_base.min(first_seq).max(self.flushed_seq + 1);
        }
        for (i, r) in records.into_iter().enumerate() {
            self.count += 1;
            self.bytes += r.size();
            self.push_slot(first_seq + i as u64, ts, r);
        }
        self.finish_append(first_seq, n, ts, idem_key);
        self.enforce_caps();
    }

    /// Applies an append and, for an exactly-once router's copy, its mark (the last source
    /// seq it has landed here), committed together like the WAL frame that carries both.
    pub fn apply_marked_append(
        &mut self,
        first_seq: u64,
        ts: u64,
        idem_key: Option<&str>,
        records: Vec<NewRecord>,
        mark: Option<(String, u64)>,
    ) {
        self.apply_append(first_seq, ts, idem_key, records);
        if let Some((router, src_seq)) = mark {
            self.router_marks.insert(router.into(), src_seq);
        }
    }

    /// Recovery: puts back into the hot tail the records of an append logged before the
    /// snapshot that are not yet in a segment (everything else about it is in the snapshot).
    pub fn apply_fill(&mut self, first_seq: u64, ts: u64, records: Vec<NewRecord>) {
        for (i, r) in records.into_iter().enumerate() {
            let seq = first_seq + i as u64;
            if seq <= self.flushed_seq || seq > self.head_seq || seq < self.evict_floor {
                continue;
            }
            if self.fill_holes.as_ref().is_some_and(|h| h.contains(seq)) {
                continue;
            }
            if self.mem.back().is_some_and(|s| s.seq >= seq) {
                continue;
            }
            self.push_slot(seq, ts, r);
        }
    }

    /// Adds a record at the end of the hot tail.
    fn push_slot(&mut self, seq: u64, ts: u64, r: NewRecord) {
        self.mem_bytes += r.size() + SLOT_OVERHEAD;
        self.mem.push_back(Slot {
            seq,
            rec: Some(Record {
                seq,
                ts,
                node: r.node,
                tag: r.tag,
                data: r.data,
                meta: r.meta,
                hops: r.hops,
            }),
        });
    }

    /// Applies an append of `n` records that are not kept (an `ephemeral` topic's records, as
    /// seen by replay): only the head, timestamps and idempotency key move.
    pub fn apply_skipped(&mut self, first_seq: u64, n: u64, ts: u64, idem_key: Option<&str>) {
        if n == 0 || first_seq <= self.head_seq {
            return;
        }
        self.finish_append(first_seq, n, ts, idem_key);
    }

    fn finish_append(&mut self, first_seq: u64, n: u64, ts: u64, idem_key: Option<&str>) {
        self.head_seq = first_seq + n - 1;
        self.last_ts = self.last_ts.max(ts);
        self.last_write_ts = ts;
        if let Some(k) = idem_key {
            let e = IdemEntry {
                ts,
                first_seq,
                last_seq: self.head_seq,
            };
            if self.idem.insert(k.into(), e).is_none() {
                self.idem_order.push_back((ts, k.into()));
            }
        }
    }

    /// Evicts the oldest records while a `discard: "old"` cap is exceeded.
    pub fn enforce_caps(&mut self) {
        let c = &self.config;
        if c.discard != Discard::Old {
            return;
        }
        let (cap_r, cap_b) = (c.cap_records, c.cap_bytes);
        let over = |t: &Topic| (cap_r > 0 && t.count > cap_r) || (cap_b > 0 && t.bytes > cap_b);
        let mut evicted = false;
        while over(self) {
            // Whole blocks at once while they all have to go.
            if let Some(b) = self.blocks.first() {
                let whole = b.last_seq < self.mem_base
                    && ((cap_r > 0 && self.count - (b.live as u64).min(self.count) >= cap_r)
                        || (cap_b > 0 && self.bytes - b.live_bytes.min(self.bytes) >= cap_b));
                if whole {
                    let b = self.blocks.remove(0);
                    self.count = self.count.saturating_sub(b.live as u64);
                    self.bytes = self.bytes.saturating_sub(b.live_bytes);
                    self.evict_floor = self.evict_floor.max(b.last_seq + 1);
                    evicted = true;
                    continue;
                }
            }
            let Some((seq, size, _)) = self.front() else {
                break;
            };
            self.kill(seq, size, false);
            self.evict_floor = self.evict_floor.max(seq + 1);
            evicted = true;
        }
        if evicted {
            self.floor_moved(LossReason::Cap);
        }
    }

    /// Expires records older than `ttl_ms` (by `$ts`). Returns whether anything expired.
    pub fn expire(&mut self, now_ms: u64) -> bool {
        let ttl = self.config.ttl_ms;
        if ttl == 0 {
            return false;
        }
        let cutoff = now_ms.saturating_sub(ttl);
        let mut expired = false;
        loop {
            if let Some(b) = self.blocks.first() {
                // `$ts` never decreases along seqs: nothing older than the block's first.
                if b.first_seq < self.mem_base && b.first_ts >= cutoff {
                    break;
                }
                if b.last_seq < self.mem_base
                    && b.last_ts < cutoff
                    && b.last_seq <= self.visible_seq
                {
                    let b = self.blocks.remove(0);
                    self.count = self.count.saturating_sub(b.live as u64);
                    self.bytes = self.bytes.saturating_sub(b.live_bytes);
                    self.evict_floor = self.evict_floor.max(b.last_seq + 1);
                    expired = true;
                    continue;
                }
            }
            let Some((seq, size, ts)) = self.front() else {
                break;
            };
            if ts >= cutoff || seq > self.visible_seq {
                break;
            }
            self.kill(seq, size, false);
            self.evict_floor = self.evict_floor.max(seq + 1);
            expired = true;
        }
        if expired {
            self.floor_moved(LossReason::Ttl);
        }
        expired
    }

    /// Marks everything up to the head as lost at a restart (ephemeral records, reserved
    /// seqs of a crashed run).
    pub fn lose_through_head(&mut self, reason: LossReason) {
        if self.count > 0 || self.evict_floor > self.head_seq {
            return;
        }
        self.mem.clear();
        self.mem_bytes = 0;
        if self.head_seq > 0 {
            self.evict_floor = self.head_seq + 1;
            self.floor_moved(reason);
        }
    }

    /// Deletes live records with seq `< before_seq` (if given) whose tag matches (if given),
    /// among seqs `<= upto_seq`. Returns how many were deleted. Records in segments are read
    /// synchronously to match tags (the live path resolves tag deletes ahead of time and logs
    /// [`delete_seqs`](Self::delete_seqs) instead; this serves replay of older logs).
    pub fn delete_records(
        &mut self,
        before_seq: Option<u64>,
        matcher: Option<&TagMatch>,
        upto_seq: u64,
    ) -> u64 {
        let limit = before_seq
            .map(|b| b.saturating_sub(1))
            .unwrap_or(u64::MAX)
            .min(upto_seq);
        let mut deleted = 0;
        // Segments.
        let mut i = 0;
        while i < self.blocks.len() {
            let b = &self.blocks[i];
            if b.first_seq > limit || b.first_seq >= self.mem_base {
                break;
            }
            if matcher.is_none() && b.last_seq <= limit && b.last_seq < self.mem_base {
                let b = self.blocks.remove(i);
                self.count = self.count.saturating_sub(b.live as u64);
                self.bytes = self.bytes.saturating_sub(b.live_bytes);
                deleted += b.live as u64;
                self.deleted.remove(b.first_seq, b.last_seq);
                if let Some(q) = &mut self.queue {
                    q.forget_range(b.first_seq, b.last_seq);
                }
                continue;
            }
            let victims: Vec<(u64, u64)> = match matcher {
                None => self
                    .store
                    .entries(&mut self.blocks[i])
                    .iter()
                    .map(|e| (e.seq, e.size))
                    .collect(),
                Some(m) => match self.store.read_block_sync(&self.blocks[i]) {
                    Ok(recs) => recs
                        .iter()
                        .filter(|r| m.matches(r.tag.as_deref()))
                        .map(|r| (r.seq, r.size()))
                        .collect(),
                    Err(e) => {
                        log::error!("{e}");
                        Vec::new()
                    }
                },
            };
            for (seq, size) in victims {
                if seq > limit || seq >= self.mem_base {
                    break;
                }
                if !self.seg_gone(seq) {
                    self.kill(seq, size, true);
                    deleted += 1;
                }
            }
            i += 1;
        }
        // The hot tail.
        let start = self.slot_pos(self.mem_base);
        let victims: Vec<(u64, u64)> = self
            .mem
            .range(start..)
            .take_while(|s| s.seq <= limit)
            .filter_map(|s| s.rec.as_ref())
            .filter(|r| matcher.is_none_or(|m| m.matches(r.tag.as_deref())))
            .map(|r| (r.seq, r.size()))
            .collect();
        for (seq, size) in victims {
            self.kill(seq, size, true);
            deleted += 1;
        }
        self.trim_front();
        deleted
    }

    /// Deletes the given records (seq, payload size), resolved by the caller; those already
    /// gone are skipped. Returns how many were deleted.
    pub fn delete_seqs(&mut self, victims: &[(u64, u64)]) -> u64 {
        let mut deleted = 0;
        for &(seq, size) in victims {
            let live = if seq >= self.mem_base {
                let i = self.slot_pos(seq);
                self.mem
                    .get(i)
                    .is_some_and(|s| s.seq == seq && s.rec.is_some())
            } else {
                !self.seg_gone(seq) && self.block_pos(seq).is_some()
            };
            if live {
                self.kill(seq, size, true);
                deleted += 1;
            }
        }
        self.trim_front();
        deleted
    }

    /// Leases queue jobs (or extends leases): (seq, lease id, deadline, deliveries, size).
    pub fn apply_lease(&mut self, node: &str, entries: &[(u64, u64, u64, u32, u64)], fresh: u64) {
        let Some(q) = &mut self.queue else {
            return;
        };
        let node: Rc<str> = Rc::from(node);
        for &(seq, lease_id, deadline, deliveries, size) in entries {
            q.next_lease = q.next_lease.max(lease_id + 1);
            q.delayed.remove(&seq);
            q.deliveries.insert(seq, deliveries);
            q.leases.insert(
                seq,
                crate::queue::Lease {
                    node: node.clone(),
                    lease_id,
                    deadline,
                    size,
                },
            );
        }
        q.fresh_cursor = q.fresh_cursor.max(fresh);
    }

    /// Gives leases back: (seq, claimable again at; 0 = now).
    pub fn apply_release(&mut self, entries: &[(u64, u64)]) {
        let Some(q) = &mut self.queue else {
            return;
        };
        for &(seq, at) in entries {
            q.leases.remove(&seq);
            if at > 0 {
                q.delayed.insert(seq, at);
            } else {
                q.delayed.remove(&seq);
            }
        }
        q.released.notify_all();
    }

    /// Tag delete, step one: the live records of the hot tail matching, up to `upto`, and the
    /// blocks whose records must be read to find the rest.
    pub fn delete_candidates(
        &self,
        matcher: &TagMatch,
        limit: u64,
    ) -> (Vec<(u64, u64)>, Vec<BlockRef>) {
        let blocks = self
            .blocks
            .iter()
            .take_while(|b| b.first_seq <= limit && b.first_seq < self.mem_base)
            .filter(|b| b.live > 0)
            .map(|b| BlockRef {
                entries: None,
                ..b.clone()
            })
            .collect();
        let start = self.slot_pos(self.mem_base);
        let mem = self
            .mem
            .range(start..)
            .take_while(|s| s.seq <= limit)
            .filter_map(|s| s.rec.as_ref())
            .filter(|r| matcher.matches(r.tag.as_deref()))
            .map(|r| (r.seq, r.size()))
            .collect();
        (mem, blocks)
    }

    /// Whether record `seq` exists and is live.
    pub fn is_live(&self, seq: u64) -> bool {
        if seq >= self.mem_base {
            let i = self.slot_pos(seq);
            self.mem
                .get(i)
                .is_some_and(|s| s.seq == seq && s.rec.is_some())
        } else {
            !self.seg_gone(seq) && self.block_pos(seq).is_some()
        }
    }

    /// Seqs the hot tail is authoritative from.
    pub fn mem_base(&self) -> u64 {
        self.mem_base
    }

    /// The last seq known to be on stable storage, given the WAL's durable LSN, and the LSN
    /// to wait for to learn more (if anything visible is not yet durable).
    pub fn durable_seq(&mut self, durable_lsn: u64) -> (u64, Option<u64>) {
        while let Some(&(lsn, _)) = self.unsynced.front() {
            if lsn > durable_lsn {
                break;
            }
            self.unsynced.pop_front();
        }
        match self.unsynced.front() {
            Some(&(lsn, first)) => (first.saturating_sub(1).min(self.visible_seq), Some(lsn)),
            None => (self.visible_seq, None),
        }
    }

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

    pub fn durability(&self) -> Durability {
        self.config.durability
    }

    // --- checkpoints -------------------------------------------------------------------

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

    // --- snapshots ---------------------------------------------------------------------

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
        e.u32(self.deleted.0.len() as u32);
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
        e.u32(holes.0.len() as u32);
        for (s, x) in holes.ranges() {
            e.u64(s).u64(x);
        }
        if let Some(q) = &self.queue {
            q.encode(e, self.config.leases_durable);
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
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(tag: Option<&str>, node: Option<&str>) -> NewRecord {
        NewRecord {
            node: node.map(Arc::from),
            tag: tag.map(Arc::from),
            data: Arc::from(&b"1"[..]),
            meta: None,
            hops: 0,
        }
    }

    fn topic() -> Topic {
        let store = Store::new(std::path::Path::new("/nonexistent"));
        Topic::new(TopicConfig::defaults(true), 0, store, 1)
    }

    fn seqs(r: &ReadResult) -> Vec<u64> {
        r.records.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn append_read_and_cursor_advance_over_skips() {
        let mut t = topic();
        t.apply_append(
            1,
            10,
            None,
            vec![
                rec(Some("a"), None),
                rec(None, Some("n1")),
                rec(Some("b"), None),
            ],
        );
        t.visible_seq = t.head_seq;
        let r = t.read(0, 10, &["n1".to_string()]);
        assert_eq!(seqs(&r), vec![1, 3]);
        assert_eq!(r.next_from_seq, 3);
        let r = t.read(0, 1, &[]);
        assert_eq!((seqs(&r), r.next_from_seq), (vec![1], 1));
        assert_eq!(
            t.delete_records(None, Some(&TagMatch::Eq("a".into())), 3),
            1
        );
        assert_eq!(t.earliest_seq(), 2);
        let r = t.read(0, 10, &["n1".to_string()]);
        assert_eq!((seqs(&r), r.next_from_seq), (vec![3], 3));
        assert_eq!(t.delete_records(Some(4), None, 3), 2);
        assert_eq!(t.earliest_seq(), 4);
        let r = t.read(0, 10, &[]);
        assert_eq!((seqs(&r), r.next_from_seq), (vec![], 3));
    }

    #[test]
    fn fsync_records_hidden_until_visible() {
        let mut t = topic();
        t.apply_append(1, 10, None, vec![rec(None, None), rec(None, None)]);
        assert_eq!(t.read(0, 10, &[]).records.len(), 0);
        t.visible_seq = 2;
        assert_eq!(t.read(0, 10, &[]).records.len(), 2);
    }

    #[test]
    fn caps_evict_oldest_and_set_floor() {
        let mut t = topic();
        t.config.cap_records = 2;
        for s in 1..=5 {
            t.apply_append(s, 10, None, vec![rec(None, None)]);
        }
        t.visible_seq = t.head_seq;
        assert_eq!(t.count, 2);
        assert_eq!(t.earliest_seq(), 4);
        assert_eq!(t.evict_floor, 4);
        assert_eq!(t.evict_reason, Some(LossReason::Cap));
        assert_eq!(seqs(&t.read(0, 10, &[])), vec![4, 5]);
        t.config.discard = Discard::Reject;
        assert!(t.would_reject(1, 1));
    }

    #[test]
    fn ttl_expires_from_the_front_and_mixes_with_caps() {
        let mut t = topic();
        t.config.ttl_ms = 100;
        t.config.cap_records = 3;
        for s in 1..=5 {
            t.apply_append(s, 1000 + s, None, vec![rec(None, None)]);
        }
        t.visible_seq = t.head_seq;
        assert_eq!(t.evict_reason, Some(LossReason::Cap));
        assert!(!t.expire(1100));
        assert!(t.expire(1105));
        assert_eq!(t.earliest_seq(), 5);
        assert_eq!(t.evict_floor, 5);
        assert_eq!(t.evict_reason, Some(LossReason::Mixed));
    }

    #[test]
    fn reservations_wait_only_when_not_yet_durable() {
        let mut r = Reservation::default();
        r.pending.push_back((10, 1024));
        assert_eq!(r.wait_for(1, 9), Some(10));
        assert_eq!(r.window, 2048);
        assert_eq!(r.wait_for(5, 10), None);
        assert_eq!(r.durable, 1024);
        r.pending.push_back((20, 3000));
        assert_eq!(r.wait_for(1000, 12), None);
        assert_eq!(r.wait_for(2000, 12), Some(20));
    }

    #[test]
    fn glob_and_eq_matching() {
        let p = TagMatch::Prefix("order-".into());
        assert!(p.matches(Some("order-1")));
        assert!(!p.matches(Some("orde")));
        assert!(!p.matches(None));
        assert!(TagMatch::Eq("x".into()).matches(Some("x")));
        assert!(!TagMatch::Eq("x".into()).matches(Some("xy")));
    }

    #[test]
    fn idempotency_window() {
        let mut t = topic();
        t.apply_append(1, 1000, Some("k"), vec![rec(None, None)]);
        assert_eq!(t.idem_lookup("k", 2000).map(|e| e.first_seq), Some(1));
        assert!(t.idem_lookup("k", 1000 + 120_001).is_none());
    }
}
