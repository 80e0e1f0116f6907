//! Queues (SPEC §7): a `type: "queue"` topic whose jobs (records) are leased to workers.
//!
//! A job is claimable when it is live, not under an active lease and not waiting out a nack
//! delay. Jobs delivered before (expired leases, elapsed delays, released leases) are served
//! first, then fresh jobs in seq order; every seq up to `fresh_cursor` has been delivered at
//! least once. An ack is the record's permanent delete. With `leases_durable`, leases and
//! delivery counts are logged like records and come back after a restart; without, a restart
//! forgets them and every unacked job is claimable again (at-least-once either way).

use crate::codec::{Dec, Enc};
use crate::config::Durability;
use crate::event::Event;
use crate::mesh::{
    shard_for, AppendCmd, ClaimCmd, ClaimReply, ClaimedJob, Command, QueueAction, QueueCmd,
    QueueInfo, QueueReply, Reply, ShardError, Timings,
};
use crate::ops::Op;
use crate::shard::{now_ms, Shard};
use crate::topic::{NewRecord, ReadState, Record, Topic};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq)]
pub struct Lease {
    pub node: Rc<str>,
    pub lease_id: u64,
    pub deadline: u64,
    /// Payload size of the job (what its ack takes off the topic's byte count).
    pub size: u64,
}

/// A claim cohort (`claim_jitter_ms`): claims arriving within the window share the jobs.
pub struct Cohort {
    /// (max, node, lease_ms) of each member, in arrival order.
    pub members: std::cell::RefCell<Vec<(usize, String, u64)>>,
    /// Each member's share, once the leader has claimed.
    pub shares: std::cell::RefCell<Option<Vec<Vec<crate::mesh::ClaimedJob>>>>,
    pub done: Event,
}

#[derive(Default)]
pub struct QueueState {
    pub leases: BTreeMap<u64, Lease>,
    /// Deliveries so far of every job delivered at least once and not yet acked.
    pub deliveries: HashMap<u64, u32>,
    /// Nacked jobs and when they become claimable again.
    pub delayed: BTreeMap<u64, u64>,
    pub fresh_cursor: u64,
    pub dead_lettered: u64,
    pub next_lease: u64,
    /// Claims of this queue run one at a time (they read, then lease what they read).
    pub claim_lock: Option<Rc<glommio::sync::Semaphore>>,
    pub cohort: Option<Rc<Cohort>>,
    /// Woken when jobs may have become claimable (nack, release, ack freeing a slot).
    pub released: Rc<Event>,
}

impl QueueState {
    pub fn new() -> Self {
        QueueState {
            next_lease: Self::lease_floor(),
            ..Default::default()
        }
    }

    /// Lease ids start from the clock (ms << 20), so ids stay unique across restarts that
    /// forgot the leases and across re-creations of the queue: a late ack from before a
    /// crash can never match a new lease.
    fn lease_floor() -> u64 {
        (now_ms() << 20) | 1
    }

    pub fn lock(&mut self) -> Rc<glommio::sync::Semaphore> {
        self.claim_lock
            .get_or_insert_with(|| Rc::new(glommio::sync::Semaphore::new(1)))
            .clone()
    }

    /// Forgets everything about a job that is gone (acked, deleted, evicted).
    pub fn forget(&mut self, seq: u64) {
        self.leases.remove(&seq);
        self.deliveries.remove(&seq);
        self.delayed.remove(&seq);
    }

    pub fn forget_below(&mut self, floor: u64) {
        self.leases = self.leases.split_off(&floor);
        self.delayed = self.delayed.split_off(&floor);
        self.deliveries.retain(|s, _| *s >= floor);
    }

    pub fn forget_range(&mut self, from: u64, to: u64) {
        let doomed: Vec<u64> = self.leases.range(from..=to).map(|(s, _)| *s).collect();
        for s in doomed {
            self.leases.remove(&s);
        }
        let doomed: Vec<u64> = self.delayed.range(from..=to).map(|(s, _)| *s).collect();
        for s in doomed {
            self.delayed.remove(&s);
        }
        self.deliveries.retain(|s, _| *s < from || *s > to);
    }

    /// Whether `seq` may be claimed now (the caller knows it is live).
    pub fn claimable(&self, seq: u64, now: u64) -> bool {
        self.leases.get(&seq).is_none_or(|l| l.deadline <= now)
            && self.delayed.get(&seq).is_none_or(|t| *t <= now)
    }

    /// Jobs delivered before that are claimable now, in seq order, at most `max`.
    pub fn retries(&self, now: u64, max: usize) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .deliveries
            .keys()
            .copied()
            .filter(|s| self.claimable(*s, now))
            .collect();
        out.sort_unstable();
        out.truncate(max);
        out
    }

    /// Jobs under an active lease.
    pub fn in_flight(&self, now: u64) -> u64 {
        self.leases.values().filter(|l| l.deadline > now).count() as u64
    }

    /// Jobs waiting out a nack delay (and not leased).
    pub fn delayed_now(&self, now: u64) -> u64 {
        self.delayed
            .iter()
            .filter(|(s, t)| **t > now && self.leases.get(s).is_none_or(|l| l.deadline <= now))
            .count() as u64
    }

    /// The earliest time a lease expires or a delay elapses (for claim waits).
    pub fn next_change(&self, now: u64) -> Option<u64> {
        let l = self
            .leases
            .values()
            .map(|l| l.deadline)
            .filter(|d| *d > now);
        let d = self.delayed.values().copied().filter(|t| *t > now);
        l.chain(d).min()
    }

    /// Whether `node` holds the lease of `seq` (with `lease_id`, when given).
    pub fn holds(&self, seq: u64, node: &str, lease_id: Option<u64>) -> bool {
        self.leases
            .get(&seq)
            .is_some_and(|l| &*l.node == node && lease_id.is_none_or(|id| id == l.lease_id))
    }

    pub fn encode(&self, e: &mut Enc<'_>, durable: bool) {
        e.u64(self.dead_lettered).u64(self.next_lease);
        if !durable {
            e.u8(0);
            return;
        }
        e.u8(1).u64(self.fresh_cursor);
        e.u32(self.leases.len() as u32);
        for (s, l) in &self.leases {
            e.u64(*s)
                .bytes(l.node.as_bytes())
                .u64(l.lease_id)
                .u64(l.deadline)
                .u64(l.size);
        }
        e.u32(self.deliveries.len() as u32);
        for (s, n) in &self.deliveries {
            e.u64(*s).u32(*n);
        }
        e.u32(self.delayed.len() as u32);
        for (s, t) in &self.delayed {
            e.u64(*s).u64(*t);
        }
    }

    pub fn decode(d: &mut Dec<'_>) -> Option<QueueState> {
        let mut q = QueueState::new();
        q.dead_lettered = d.u64()?;
        q.next_lease = d.u64()?.max(Self::lease_floor());
        if d.u8()? == 0 {
            return Some(q);
        }
        q.fresh_cursor = d.u64()?;
        for _ in 0..d.u32()? {
            let s = d.u64()?;
            let l = Lease {
                node: Rc::from(d.str()?),
                lease_id: d.u64()?,
                deadline: d.u64()?,
                size: d.u64()?,
            };
            q.leases.insert(s, l);
        }
        for _ in 0..d.u32()? {
            let s = d.u64()?;
            q.deliveries.insert(s, d.u32()?);
        }
        for _ in 0..d.u32()? {
            let s = d.u64()?;
            q.delayed.insert(s, d.u64()?);
        }
        Some(q)
    }
}

/// Adds the dead-letter stamps to a job's `meta` (a JSON object, or none).
pub fn dead_letter_meta(meta: Option<&[u8]>, from: &str, deliveries: u32, seq: u64) -> Vec<u8> {
    let stamps = format!(
        "\"$dead_letter_from\":{},\"$dead_letter_deliveries\":{deliveries},\"$dead_letter_src_seq\":{seq}",
        json_string(from)
    );
    let body = meta
        .map(|m| m.trim_ascii())
        .filter(|m| m.len() >= 2 && m[0] == b'{' && m[m.len() - 1] == b'}');
    match body {
        None => format!("{{{stamps}}}").into_bytes(),
        Some(m) => {
            let inner = &m[1..m.len() - 1];
            let mut out = Vec::with_capacity(m.len() + stamps.len() + 2);
            out.push(b'{');
            if inner.trim_ascii().is_empty() {
                out.extend_from_slice(stamps.as_bytes());
            } else {
                out.extend_from_slice(inner);
                out.push(b',');
                out.extend_from_slice(stamps.as_bytes());
            }
            out.push(b'}');
            out
        }
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Default and bounds of a lease (SPEC §2: `lease_ms` clamped to [100, 86400000]).
pub const MIN_LEASE_MS: u64 = 100;
pub const MAX_LEASE_MS: u64 = 86_400_000;

fn queue_of(t: &mut Topic) -> Result<&mut QueueState, ShardError> {
    t.queue.as_deref_mut().ok_or(ShardError::NotAQueue)
}

/// `ready` and `in_flight` of a queue topic.
pub fn counts(t: &Topic, now: u64) -> (u64, u64) {
    match &t.queue {
        Some(q) => {
            let in_flight = q.in_flight(now);
            let ready = t
                .count
                .saturating_sub(in_flight)
                .saturating_sub(q.delayed_now(now));
            (ready, in_flight)
        }
        None => (0, 0),
    }
}

pub fn info(t: &Topic, now: u64) -> Option<QueueInfo> {
    let q = t.queue.as_ref()?;
    let (ready, in_flight) = counts(t, now);
    Some(QueueInfo {
        ready,
        in_flight,
        dead_lettered: q.dead_lettered,
    })
}

/// Splits `n` jobs among members in proportion to their `max` (at most `max` each).
fn shares(n: usize, maxes: &[usize]) -> Vec<usize> {
    let total: usize = maxes.iter().sum();
    if n >= total {
        return maxes.to_vec();
    }
    let mut out: Vec<usize> = maxes.iter().map(|m| n * m / total.max(1)).collect();
    let mut left = n - out.iter().sum::<usize>();
    while left > 0 {
        let mut gave = false;
        for (i, m) in maxes.iter().enumerate() {
            if left > 0 && out[i] < *m {
                out[i] += 1;
                left -= 1;
                gave = true;
            }
        }
        if !gave {
            break;
        }
    }
    out
}

impl Shard {
    pub(crate) async fn claim(self: &Rc<Self>, cmd: ClaimCmd) -> Result<Reply, ShardError> {
        let deadline = Instant::now() + Duration::from_millis(cmd.wait_ms);
        loop {
            let (lock, jitter, lease_ms, changed, released) = {
                let mut topics = self.topics.borrow_mut();
                let t = topics
                    .get_mut(&cmd.topic)
                    .ok_or(ShardError::TopicNotFound)?;
                t.expire(now_ms());
                let jitter = t.config.claim_jitter_ms;
                let lease_ms = cmd
                    .lease_ms
                    .unwrap_or(t.config.lease_ms)
                    .clamp(MIN_LEASE_MS, MAX_LEASE_MS);
                let changed = t.changed.clone();
                let q = queue_of(t)?;
                (q.lock(), jitter, lease_ms, changed, q.released.clone())
            };
            let on_change = changed.listen();
            let on_release = released.listen();
            let member = (cmd.max, cmd.node.clone(), lease_ms);
            let claimed = if jitter > 0 {
                self.claim_in_cohort(&cmd.topic, member, jitter, &lock)
                    .await?
            } else {
                let _permit = lock
                    .acquire_permit(1)
                    .await
                    .map_err(|_| ShardError::NotReady)?;
                let mut got = Vec::new();
                // Jobs moved to the dead-letter topic leave room: claim again for it.
                for _ in 0..8 {
                    let want = (member.0 - got.len(), member.1.clone(), member.2);
                    let (mut jobs, dead) = self.claim_now(&cmd.topic, &[want]).await?;
                    got.append(jobs.get_mut(0).unwrap_or(&mut Vec::new()));
                    if dead == 0 || got.len() >= member.0 {
                        break;
                    }
                }
                got
            };
            let now = now_ms();
            let (ready, next) = {
                let mut topics = self.topics.borrow_mut();
                let t = topics
                    .get_mut(&cmd.topic)
                    .ok_or(ShardError::TopicNotFound)?;
                let next = t.queue.as_ref().and_then(|q| q.next_change(now));
                (counts(t, now).0, next)
            };
            if !claimed.is_empty() || Instant::now() >= deadline {
                return Ok(Reply::Claimed(ClaimReply { claimed, ready }));
            }
            let mut wait = deadline.saturating_duration_since(Instant::now());
            if let Some(at) = next {
                wait = wait.min(Duration::from_millis(at.saturating_sub(now) + 1));
            }
            let timer = glommio::timer::sleep(wait);
            futures_lite::future::or(futures_lite::future::or(on_change, on_release), async {
                timer.await;
            })
            .await;
        }
    }

    /// Joins (or opens) the queue's claim cohort: claims arriving within `jitter` ms share
    /// the jobs then available in proportion to their `max`.
    async fn claim_in_cohort(
        self: &Rc<Self>,
        topic: &str,
        member: (usize, String, u64),
        jitter: u64,
        lock: &Rc<glommio::sync::Semaphore>,
    ) -> Result<Vec<ClaimedJob>, ShardError> {
        let (cohort, index, leader) = {
            let mut topics = self.topics.borrow_mut();
            let t = topics.get_mut(topic).ok_or(ShardError::TopicNotFound)?;
            let q = queue_of(t)?;
            match &q.cohort {
                Some(c) => {
                    let mut m = c.members.borrow_mut();
                    m.push(member);
                    (c.clone(), m.len() - 1, false)
                }
                None => {
                    let c = Rc::new(Cohort {
                        members: std::cell::RefCell::new(vec![member]),
                        shares: std::cell::RefCell::new(None),
                        done: Event::new(),
                    });
                    q.cohort = Some(c.clone());
                    (c, 0, true)
                }
            }
        };
        if leader {
            glommio::timer::sleep(Duration::from_millis(jitter)).await;
            let _permit = lock
                .acquire_permit(1)
                .await
                .map_err(|_| ShardError::NotReady)?;
            // Close the cohort: later claims open the next one.
            if let Some(t) = self.topics.borrow_mut().get_mut(topic) {
                if let Some(q) = t.queue.as_deref_mut() {
                    q.cohort = None;
                }
            }
            let members = cohort.members.borrow().clone();
            let result = self.claim_now(topic, &members).await.map(|(s, _)| s);
            let shares = match &result {
                Ok(s) => s.clone(),
                Err(_) => vec![Vec::new(); members.len()],
            };
            *cohort.shares.borrow_mut() = Some(shares);
            cohort.done.notify_all();
            result?;
        } else {
            loop {
                let l = cohort.done.listen();
                if cohort.shares.borrow().is_some() {
                    break;
                }
                l.await;
            }
        }
        let mut shares = cohort.shares.borrow_mut();
        Ok(shares
            .as_mut()
            .and_then(|s| s.get_mut(index))
            .map(std::mem::take)
            .unwrap_or_default())
    }

    /// Claims for each member (max, node, lease_ms) its share of the claimable jobs: those
    /// delivered before first, then fresh ones in seq order. The caller holds the claim lock.
    async fn claim_now(
        self: &Rc<Self>,
        topic: &str,
        members: &[(usize, String, u64)],
    ) -> Result<(Vec<Vec<ClaimedJob>>, usize), ShardError> {
        let total: usize = members.iter().map(|m| m.0).sum();
        let now = now_ms();
        let (created, retries, fresh_from) = {
            let mut topics = self.topics.borrow_mut();
            let t = topics.get_mut(topic).ok_or(ShardError::TopicNotFound)?;
            let created = t.created_lsn;
            let q = queue_of(t)?;
            (created, q.retries(now, total), q.fresh_cursor)
        };
        let mut recs: Vec<Record> = Vec::with_capacity(total);
        for s in retries {
            let mut st = ReadState::new(s - 1, 1, s);
            self.read_records(topic, created, &mut st, &[]).await?;
            recs.extend(st.out.into_iter().filter(|r| r.seq == s));
        }
        let mut fresh_next = fresh_from;
        if recs.len() < total {
            let mut st = ReadState::new(fresh_from, total - recs.len(), u64::MAX);
            self.read_records(topic, created, &mut st, &[]).await?;
            fresh_next = st.next;
            recs.extend(st.out);
        }
        // Lease what is still claimable (and move what has been delivered too often).
        let now = now_ms();
        let mut out = vec![Vec::new(); members.len()];
        let (dead, dl_topic, wait) = {
            let mut topics = self.topics.borrow_mut();
            let t = topics
                .get_mut(topic)
                .filter(|t| t.created_lsn == created)
                .ok_or(ShardError::TopicNotFound)?;
            let max_deliveries = t.config.max_deliveries;
            let dl_topic = t.config.dead_letter.clone();
            let durable = t.config.leases_durable;
            let fsync = t.config.durability == Durability::Fsync;
            let mut jobs = Vec::new();
            let mut dead = Vec::new();
            {
                let live: Vec<bool> = recs.iter().map(|r| t.is_live(r.seq)).collect();
                let q = queue_of(t)?;
                for (r, live) in recs.into_iter().zip(live) {
                    if !live || !q.claimable(r.seq, now) {
                        continue;
                    }
                    let prev = q.deliveries.get(&r.seq).copied().unwrap_or(0);
                    if max_deliveries > 0 && prev as u64 >= max_deliveries && dl_topic.is_some() {
                        dead.push((r, prev));
                    } else {
                        jobs.push((r, prev + 1));
                    }
                }
            }
            let split = shares(jobs.len(), &members.iter().map(|m| m.0).collect::<Vec<_>>());
            let mut jobs = jobs.into_iter();
            let mut wait = None;
            for (i, ((_, node, lease_ms), n)) in members.iter().zip(split).enumerate() {
                let mut entries = Vec::with_capacity(n);
                let deadline = now + lease_ms;
                let q = queue_of(t)?;
                for (r, deliveries) in jobs.by_ref().take(n) {
                    let lease_id = q.next_lease;
                    q.next_lease += 1;
                    entries.push((r.seq, lease_id, deadline, deliveries, r.size()));
                    out[i].push(ClaimedJob {
                        record: r,
                        lease_id,
                        deadline,
                        deliveries,
                    });
                }
                let fresh = if i + 1 == members.len() {
                    fresh_next
                } else {
                    0
                };
                if durable && (!entries.is_empty() || fresh > q.fresh_cursor) {
                    self.check_writable()?;
                    let op = Op::QueueLease {
                        topic: topic.to_string(),
                        node: node.clone(),
                        entries: entries.clone(),
                        fresh_cursor: fresh,
                    };
                    let lsn = self.log(&op, fsync);
                    if fsync {
                        wait = Some(lsn);
                    }
                }
                t.apply_lease(node, &entries, fresh);
            }
            (dead, dl_topic, wait)
        };
        if let Some(lsn) = wait {
            self.durable(lsn).await?;
        }
        let dead_count = dead.len();
        if let Some(dl) = dl_topic {
            if !dead.is_empty() {
                self.dead_letter(topic, created, &dl, dead).await?;
            }
        }
        Ok((out, dead_count))
    }

    /// Moves jobs to the dead-letter topic: appended there (with a stable idempotency key,
    /// so a retry after a crash does not copy twice), then deleted here.
    async fn dead_letter(
        self: &Rc<Self>,
        topic: &str,
        created: u64,
        dl: &str,
        dead: Vec<(Record, u32)>,
    ) -> Result<(), ShardError> {
        let remote = self.remote()?;
        for (r, deliveries) in dead {
            let meta = dead_letter_meta(r.meta.as_deref(), topic, deliveries, r.seq);
            let cmd = Command::Append(AppendCmd {
                topic: dl.to_string(),
                records: vec![NewRecord {
                    node: r.node.clone(),
                    tag: r.tag.clone(),
                    data: r.data.clone(),
                    meta: Some(Arc::from(meta)),
                    hops: r.hops,
                }],
                idempotency_key: Some(format!("dead-letter:{topic}:{created}:{}", r.seq)),
                create: Some(true),
                config: None,
                router_mark: None,
                disable_backpressure: true,
                stream: None,
            });
            match remote.call(shard_for(dl, remote.shards()), cmd).await {
                Reply::Appended(_) => {}
                Reply::Err(e) => {
                    log::warn!("dead letter {topic:?} seq {} to {dl:?}: {e:?}", r.seq);
                    continue;
                }
                _ => continue,
            }
            let mut topics = self.topics.borrow_mut();
            let Some(t) = topics.get_mut(topic).filter(|t| t.created_lsn == created) else {
                return Ok(());
            };
            self.check_writable()?;
            let op = Op::QueueDead {
                topic: topic.to_string(),
                victims: vec![(r.seq, r.size())],
            };
            self.log(&op, t.config.durability == Durability::Fsync);
            let n = t.delete_seqs(&[(r.seq, r.size())]);
            if let Some(q) = t.queue.as_deref_mut() {
                q.dead_lettered += n;
            }
        }
        Ok(())
    }

    pub(crate) async fn queue_cmd(&self, cmd: QueueCmd) -> Result<Reply, ShardError> {
        let t0 = Instant::now();
        let now = now_ms();
        let (reply, wait) = {
            let mut topics = self.topics.borrow_mut();
            let t = topics
                .get_mut(&cmd.topic)
                .ok_or(ShardError::TopicNotFound)?;
            t.expire(now);
            let durable = t.config.leases_durable;
            let fsync = t.config.durability == Durability::Fsync;
            let fresh = {
                let q = queue_of(t)?;
                q.fresh_cursor
            };
            let mut done = Vec::new();
            let mut skipped = Vec::new();
            let mut seen = std::collections::HashSet::new();
            let mut victims = Vec::new();
            let mut releases = Vec::new();
            let mut extends = Vec::new();
            let mut deadlines = Vec::new();
            {
                let q = queue_of(t)?;
                for (i, &seq) in cmd.seqs.iter().enumerate() {
                    if !seen.insert(seq) {
                        // A seq named twice in one call counts once.
                        continue;
                    }
                    let lid = cmd.lease_ids.as_ref().and_then(|v| v.get(i).copied());
                    let Some(l) = q.leases.get(&seq).filter(|_| q.holds(seq, &cmd.node, lid))
                    else {
                        skipped.push(seq);
                        continue;
                    };
                    match cmd.action {
                        QueueAction::Held => {
                            if l.deadline <= now {
                                skipped.push(seq);
                                continue;
                            }
                        }
                        QueueAction::Ack => victims.push((seq, l.size)),
                        QueueAction::Nack { delay_ms } => {
                            releases.push((seq, if delay_ms > 0 { now + delay_ms } else { 0 }))
                        }
                        QueueAction::Release => releases.push((seq, 0)),
                        QueueAction::Extend { lease_ms } => {
                            let deadline = now + lease_ms;
                            let n = q.deliveries.get(&seq).copied().unwrap_or(1);
                            extends.push((seq, l.lease_id, deadline, n, l.size));
                            deadlines.push((seq, deadline));
                        }
                    }
                    done.push(seq);
                }
            }
            let mut wait = None;
            if !victims.is_empty() {
                self.check_writable()?;
                let op = Op::DeleteSeqs {
                    topic: cmd.topic.clone(),
                    victims,
                };
                let lsn = self.log(&op, fsync);
                if let Op::DeleteSeqs { victims, .. } = &op {
                    t.delete_seqs(victims);
                }
                wait = fsync.then_some(lsn);
            }
            if !releases.is_empty() {
                if durable {
                    self.check_writable()?;
                    let op = Op::QueueRelease {
                        topic: cmd.topic.clone(),
                        entries: releases.clone(),
                    };
                    let lsn = self.log(&op, fsync);
                    wait = fsync.then_some(lsn);
                }
                t.apply_release(&releases);
            }
            if !extends.is_empty() {
                if durable {
                    self.check_writable()?;
                    let op = Op::QueueLease {
                        topic: cmd.topic.clone(),
                        node: cmd.node.clone(),
                        entries: extends.clone(),
                        fresh_cursor: fresh,
                    };
                    let lsn = self.log(&op, fsync);
                    wait = fsync.then_some(lsn);
                }
                t.apply_lease(&cmd.node, &extends, fresh);
            }
            if cmd.action == QueueAction::Ack {
                if let Some(q) = &t.queue {
                    // A `/work` stream waiting for a free slot.
                    q.released.notify_all();
                }
            }
            let (ready, in_flight) = counts(t, now);
            let reply = QueueReply {
                done,
                skipped,
                deadlines,
                ready,
                in_flight,
                timings: Timings::default(),
            };
            (reply, wait)
        };
        let mut reply = reply;
        reply.timings.wal_append_ms = t0.elapsed().as_secs_f64() * 1000.0;
        if let Some(lsn) = wait {
            let t1 = Instant::now();
            self.durable(lsn).await?;
            reply.timings.fsync_ms = t1.elapsed().as_secs_f64() * 1000.0;
        }
        Ok(Reply::Queue(reply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_stamps_merge_into_meta() {
        let m = dead_letter_meta(None, "q", 3, 7);
        assert_eq!(
            String::from_utf8_lossy(&m),
            r#"{"$dead_letter_from":"q","$dead_letter_deliveries":3,"$dead_letter_src_seq":7}"#
        );
        let m = dead_letter_meta(Some(br#" { "a" : 1 } "#), "q", 1, 2);
        assert_eq!(
            String::from_utf8_lossy(&m),
            r#"{ "a" : 1 ,"$dead_letter_from":"q","$dead_letter_deliveries":1,"$dead_letter_src_seq":2}"#
        );
        let m = dead_letter_meta(Some(b"{ }"), "q", 1, 2);
        assert!(m.starts_with(br#"{"$dead_letter_from""#));
    }

    #[test]
    fn claimable_and_retries() {
        let mut q = QueueState::new();
        let lease = |d| Lease {
            node: Rc::from("w"),
            lease_id: 1,
            deadline: d,
            size: 1,
        };
        q.leases.insert(5, lease(100));
        q.leases.insert(6, lease(10));
        q.deliveries.insert(5, 1);
        q.deliveries.insert(6, 1);
        q.deliveries.insert(7, 2);
        q.delayed.insert(7, 50);
        assert!(!q.claimable(5, 20));
        assert!(q.claimable(6, 20));
        assert!(!q.claimable(7, 20));
        assert_eq!(q.retries(20, 10), vec![6]);
        assert_eq!(q.retries(60, 10), vec![6, 7]);
        assert_eq!(q.in_flight(20), 1);
        assert_eq!(q.next_change(20), Some(50));
        assert!(q.holds(5, "w", Some(1)));
        assert!(!q.holds(5, "w", Some(2)));
        assert!(!q.holds(5, "x", None));
        let mut buf = Vec::new();
        q.encode(&mut Enc(&mut buf), true);
        let back = QueueState::decode(&mut Dec::new(&buf)).expect("decodes");
        assert_eq!(back.leases, q.leases);
        assert_eq!(back.deliveries, q.deliveries);
        assert_eq!(back.delayed, q.delayed);
        q.forget_below(6);
        assert!(!q.leases.contains_key(&5));
    }
}
