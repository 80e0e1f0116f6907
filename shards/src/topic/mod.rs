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
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

mod persist;
mod ranges;
mod read;

pub use ranges::RangeSet;
pub use read::{ReadResult, ReadState};

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
    /// A Durable Stream's state (`/v1`; topics named `/...` only).
    pub stream: Option<Box<crate::stream::StreamState>>,
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

impl Topic {
    pub fn new(config: TopicConfig, now_ms: u64, store: Rc<Store>, created_lsn: u64) -> Self {
        let queue = (config.topic_type == TopicType::Queue).then(|| Box::new(QueueState::new()));
        Topic {
            queue,
            stream: None,
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

    pub fn durability(&self) -> Durability {
        self.config.durability
    }
}

#[cfg(test)]
mod tests;
