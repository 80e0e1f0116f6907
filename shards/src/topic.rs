//! One topic's state machine: records, head and floors, deletes, caps, idempotency keys.
//!
//! Everything here is deterministic given the sequence of operations, so the live write path
//! and WAL replay share it: the shard encodes an operation, queues it in the WAL and applies it
//! here; recovery decodes the same operation and applies it again.

use crate::config::{Discard, Durability, TopicConfig};
use crate::event::Event;
use std::collections::{HashMap, VecDeque};
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

pub struct Topic {
    pub config: TopicConfig,
    /// Records `base_seq..` in seq order; `None` marks a deleted record not yet trimmed.
    records: VecDeque<Option<Record>>,
    base_seq: u64,
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

/// Upper bound on records examined by one read, so a huge deleted range costs bounded time.
const MAX_SCAN: usize = 100_000;

impl Topic {
    pub fn new(config: TopicConfig, now_ms: u64) -> Self {
        Topic {
            config,
            records: VecDeque::new(),
            base_seq: 1,
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

    /// First live seq; `head_seq + 1` when empty.
    pub fn earliest_seq(&self) -> u64 {
        for (i, r) in self.records.iter().enumerate() {
            if r.is_some() {
                return self.base_seq + i as u64;
            }
        }
        self.head_seq + 1
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
        if !self.make_room(first_seq, n) {
            return;
        }
        if self.records.is_empty() {
            self.base_seq = first_seq;
        }
        for (i, r) in records.into_iter().enumerate() {
            self.count += 1;
            self.bytes += r.size();
            self.records.push_back(Some(Record {
                seq: first_seq + i as u64,
                ts,
                node: r.node,
                tag: r.tag,
                data: r.data,
                meta: r.meta,
                hops: r.hops,
            }));
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

    /// Applies an append of `n` records that are not kept (an `ephemeral` topic's records, as
    /// seen by replay): only the head, timestamps and idempotency key move.
    pub fn apply_skipped(&mut self, first_seq: u64, n: u64, ts: u64, idem_key: Option<&str>) {
        if !self.make_room(first_seq, n) {
            return;
        }
        self.trim_all();
        self.base_seq = first_seq + n;
        self.finish_append(first_seq, n, ts, idem_key);
    }

    fn make_room(&mut self, first_seq: u64, n: u64) -> bool {
        if n == 0 || first_seq <= self.head_seq {
            return false;
        }
        if first_seq > self.head_seq + 1 {
            // Seqs skipped (reserved by a crashed run, never written): nothing to keep.
            self.trim_all();
            self.base_seq = first_seq;
        }
        true
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

    fn trim_all(&mut self) {
        self.records.clear();
        self.count = 0;
        self.bytes = 0;
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
            let Some(front) = self.records.pop_front() else {
                break;
            };
            self.base_seq += 1;
            if let Some(r) = front {
                self.count -= 1;
                self.bytes -= r.size();
                self.evict_floor = r.seq + 1;
                evicted = true;
            }
        }
        if evicted {
            self.evict_reason = Some(LossReason::merge(self.evict_reason, LossReason::Cap));
            self.trim_front();
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
        while let Some(front) = self.records.front() {
            match front {
                Some(r) if r.ts >= cutoff => break,
                Some(r) if r.seq > self.visible_seq => break,
                _ => {}
            }
            if let Some(Some(r)) = self.records.pop_front() {
                self.count -= 1;
                self.bytes -= r.size();
                self.evict_floor = r.seq + 1;
                expired = true;
            }
            self.base_seq += 1;
        }
        if expired {
            self.evict_reason = Some(LossReason::merge(self.evict_reason, LossReason::Ttl));
        }
        self.trim_front();
        expired
    }

    /// Marks everything up to the head as lost at a restart (ephemeral records, reserved
    /// seqs of a crashed run).
    pub fn lose_through_head(&mut self, reason: LossReason) {
        if self.count > 0 || self.evict_floor > self.head_seq {
            return;
        }
        if self.head_seq > 0 {
            self.evict_floor = self.head_seq + 1;
            self.evict_reason = Some(LossReason::merge(self.evict_reason, reason));
        }
        self.trim_all();
        self.base_seq = self.head_seq + 1;
    }

    fn trim_front(&mut self) {
        while let Some(None) = self.records.front() {
            self.records.pop_front();
            self.base_seq += 1;
        }
        if self.records.is_empty() {
            self.base_seq = self.head_seq + 1;
        }
    }

    /// Deletes live records with seq `< before_seq` (if given) whose tag matches (if given),
    /// among seqs `<= upto_seq`. Returns how many were deleted.
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
        for (i, slot) in self.records.iter_mut().enumerate() {
            let seq = self.base_seq + i as u64;
            if seq > limit {
                break;
            }
            let hit = match (slot.as_ref(), matcher) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(r), Some(m)) => m.matches(r.tag.as_deref()),
            };
            if hit {
                if let Some(r) = slot.take() {
                    self.count -= 1;
                    self.bytes -= r.size();
                    deleted += 1;
                }
            }
        }
        self.trim_front();
        deleted
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

    /// Reads visible records after `from_seq`, skipping deleted ones and those whose node is
    /// in `skip_nodes`.
    pub fn read(&self, from_seq: u64, limit: usize, skip_nodes: &[String]) -> ReadResult {
        self.read_upto(from_seq, limit, skip_nodes, self.visible_seq)
    }

    /// As [`read`](Self::read), but only up to seq `upto` (at most the visible head).
    pub fn read_upto(
        &self,
        from_seq: u64,
        limit: usize,
        skip_nodes: &[String],
        upto: u64,
    ) -> ReadResult {
        let visible = self.visible_seq.min(upto);
        let mut out = Vec::new();
        let mut next = from_seq.max(self.base_seq.saturating_sub(1)).min(visible);
        let mut scanned = 0u64;
        let start = next + 1;
        if start <= visible && start >= self.base_seq {
            let mut idx = (start - self.base_seq) as usize;
            while out.len() < limit && (scanned as usize) < MAX_SCAN {
                let Some(slot) = self.records.get(idx) else {
                    // Past the stored records (seqs reserved but never written).
                    next = visible;
                    break;
                };
                let seq = self.base_seq + idx as u64;
                if seq > visible {
                    break;
                }
                scanned += 1;
                next = seq;
                idx += 1;
                if let Some(r) = slot {
                    let skip = r
                        .node
                        .as_deref()
                        .is_some_and(|n| skip_nodes.iter().any(|s| s == n));
                    if !skip {
                        out.push(r.clone());
                    }
                }
            }
        } else if start <= visible {
            next = visible;
        }
        ReadResult {
            records: out,
            next_from_seq: next,
            scanned,
        }
    }

    pub fn durability(&self) -> Durability {
        self.config.durability
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
        Topic::new(TopicConfig::defaults(true), 0)
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
