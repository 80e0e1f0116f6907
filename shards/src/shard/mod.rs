//! The storage engine of one core: its topics and its write-ahead log.
//!
//! A `Shard` is single-threaded (it lives on one glommio executor) and lock-free: topics sit
//! in a `RefCell`'d map that is never borrowed across an `.await`.

use crate::config::{Durability, TopicConfig};
use crate::mesh::*;
use crate::ops::Op;
use crate::router::{apply_router, RouterState};
use crate::segment::Store;
use crate::topic::{LossReason, ReadState, Topic};
use crate::wal::{self, ReplayProgress, Wal, WalError};
use crate::watch::{apply_watch, Session};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

mod records;

pub struct ShardOptions {
    pub id: usize,
    pub dir: PathBuf,
    pub sync_interval: Duration,
    /// Size of each preallocated WAL file (`wal::FILE_SIZE` in production).
    pub wal_file_size: u64,
    pub auto_create: bool,
    /// Memory for record payloads (the hot tail) of this shard.
    pub hot_tail_bytes: u64,
    /// Longest time between checkpoints while anything changed.
    pub checkpoint_interval: Duration,
    /// Number of topics on this shard, kept current for readiness and metrics.
    pub topic_gauge: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Topic counts of every shard (this one's is `topic_gauge`), for the topic cap.
    pub all_topic_gauges: Vec<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
    /// Most topics on the server (0 = unlimited).
    pub max_topics: usize,
    /// Most routers on the server (0 = unlimited; checked on shard 0).
    pub max_routers: usize,
    /// Retained payload bytes of every shard (this one's at index `id`), for the byte cap.
    pub all_bytes_gauges: Vec<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// Most retained payload bytes on the server (0 = unlimited).
    pub max_retained_bytes: u64,
    /// Requests in flight on this core before lower-priority ones are shed (0 = unlimited).
    pub max_queue: usize,
    /// Number of watch sessions on this shard, for the resource cap.
    pub session_gauge: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub struct Shard {
    pub opts: ShardOptions,
    pub(crate) topics: RefCell<BTreeMap<String, Box<Topic>>>,
    pub(crate) routers: RefCell<BTreeMap<String, RouterState>>,
    pub(crate) sessions: RefCell<BTreeMap<String, Session>>,
    /// Serialises router changes (used on shard 0).
    pub(crate) router_lock: glommio::sync::Semaphore,
    remote: RefCell<Option<Rc<dyn Remote>>>,
    generation: Cell<u64>,
    pub wal: Rc<Wal>,
    pub(crate) store: Rc<Store>,
    admission: Rc<crate::overload::Admission>,
    /// Requests served on this core (recorded by the server, reported by `stats`).
    pub requests: RefCell<crate::metrics::RequestMetrics>,
    pub(crate) ckpt: crate::checkpoint::CheckpointState,
    scratch: RefCell<Vec<u8>>,
    ready: Cell<bool>,
    pub(crate) closed: Cell<bool>,
}

/// Applies a logged operation (live, right after logging it, and at replay). `lsn` is the
/// operation's WAL position.
pub(crate) fn apply(
    topics: &mut BTreeMap<String, Box<Topic>>,
    store: &Rc<Store>,
    op: Op,
    now: u64,
    lsn: u64,
) {
    match op {
        Op::Config { topic, config } => match topics.get_mut(&topic) {
            Some(t) => {
                t.config = config;
                t.enforce_caps();
                t.expire(now);
            }
            None => {
                topics.insert(topic, Box::new(Topic::new(config, now, store.clone(), lsn)));
            }
        },
        Op::Append {
            topic,
            first_seq,
            ts,
            idem_key,
            records,
            mark,
            stream,
        } => {
            if let Some(t) = topics.get_mut(&topic) {
                t.apply_marked_append(first_seq, ts, idem_key.as_deref(), records, mark);
                if let (Some(stamp), Some(s)) = (stream, t.stream.as_mut()) {
                    s.apply_stamp(&stamp);
                }
            }
        }
        Op::StreamState { topic, state } => {
            if let Some(t) = topics.get_mut(&topic) {
                crate::stream::apply_state(t, *state);
            }
        }
        Op::Skipped {
            topic,
            first_seq,
            count,
            ts,
            idem_key,
        } => {
            if let Some(t) = topics.get_mut(&topic) {
                t.apply_skipped(first_seq, count, ts, idem_key.as_deref());
            }
        }
        Op::Reserve { topic, upto } => {
            if let Some(t) = topics.get_mut(&topic) {
                t.reserved_seq = t.reserved_seq.max(upto);
                t.reservation.durable = t.reserved_seq;
            }
        }
        Op::Delete {
            topic,
            before_seq,
            matcher,
            upto_seq,
        } => {
            if let Some(t) = topics.get_mut(&topic) {
                t.delete_records(before_seq, matcher.as_ref(), upto_seq);
            }
        }
        Op::DeleteSeqs { topic, victims } => {
            if let Some(t) = topics.get_mut(&topic) {
                t.delete_seqs(&victims);
            }
        }
        Op::QueueLease {
            topic,
            node,
            entries,
            fresh_cursor,
        } => {
            if let Some(t) = topics.get_mut(&topic) {
                t.apply_lease(&node, &entries, fresh_cursor);
            }
        }
        Op::QueueRelease { topic, entries } => {
            if let Some(t) = topics.get_mut(&topic) {
                t.apply_release(&entries);
            }
        }
        Op::QueueDead { topic, victims } => {
            if let Some(t) = topics.get_mut(&topic) {
                let n = t.delete_seqs(&victims);
                if let Some(q) = &mut t.queue {
                    q.dead_lettered += n;
                }
            }
        }
        Op::Settle { topic, head } => {
            if let Some(t) = topics.get_mut(&topic) {
                if t.head_seq == head {
                    t.reserved_seq = head;
                }
            }
        }
        Op::Drop { topic } => {
            if let Some(t) = topics.remove(&topic) {
                t.changed.notify_all();
            }
        }
        Op::RouterPut { .. }
        | Op::RouterCursor { .. }
        | Op::RouterDel { .. }
        | Op::WatchPut { .. }
        | Op::WatchCursor { .. }
        | Op::WatchDel { .. } => {}
    }
}

impl Shard {
    /// Loads the newest snapshot, replays the WAL after it, and opens the log for writing.
    pub async fn open(
        opts: ShardOptions,
        progress: &ReplayProgress,
    ) -> Result<Rc<Shard>, WalError> {
        std::fs::create_dir_all(&opts.dir)
            .map_err(|e| WalError(format!("create {}: {e}", opts.dir.display())))?;
        crate::segment::probe_dma(&opts.dir).await;
        let store = Store::new(&opts.dir);
        let mut topics = BTreeMap::new();
        let mut routers = BTreeMap::new();
        let mut sessions = BTreeMap::new();
        let now = now_ms();
        let snap = crate::snapshot::load(&opts.dir);
        let (fill_lsn, state_lsn, next_seg) = match &snap {
            Some(s) => {
                progress
                    .total_bytes
                    .fetch_add(s.len() as u64, std::sync::atomic::Ordering::Relaxed);
                let n = crate::checkpoint::load_entries(
                    s,
                    &store,
                    now,
                    &mut topics,
                    &mut routers,
                    &mut sessions,
                )?;
                progress
                    .done_bytes
                    .fetch_add(s.len() as u64, std::sync::atomic::Ordering::Relaxed);
                log::info!(
                    "shard {}: snapshot {} ({n} entries)",
                    opts.id,
                    s.path.display()
                );
                (s.fill_lsn, s.state_lsn, s.next_seg)
            }
            None => (0, 0, 1),
        };
        drop(snap);
        let mut undecodable = 0u64;
        let (wal, first_lsn) = wal::open(
            &opts.dir,
            opts.wal_file_size,
            opts.sync_interval,
            progress,
            |kind, lsn, body| {
                if lsn <= fill_lsn {
                    return;
                }
                let Some(op) = Op::decode(kind, body) else {
                    undecodable += 1;
                    return;
                };
                if lsn <= state_lsn {
                    // Before the snapshot's state: only give back records not yet in segments.
                    if let Op::Append {
                        topic,
                        first_seq,
                        ts,
                        records,
                        ..
                    } = op
                    {
                        if let Some(t) = topics.get_mut(&topic) {
                            if lsn > t.created_lsn {
                                t.apply_fill(first_seq, ts, records);
                            }
                        }
                    }
                    return;
                }
                match op {
                    op
                    @ (Op::RouterPut { .. } | Op::RouterCursor { .. } | Op::RouterDel { .. }) => {
                        apply_router(&mut routers, op, 0)
                    }
                    op @ (Op::WatchPut { .. } | Op::WatchCursor { .. } | Op::WatchDel { .. }) => {
                        apply_watch(&mut sessions, op, now)
                    }
                    op => apply(&mut topics, &store, op, now, lsn),
                }
            },
        )
        .await?;
        if state_lsn > 0 && first_lsn.is_some_and(|f| f > fill_lsn + 1) {
            return Err(WalError(format!(
                "shard {}: the WAL starts at frame {} but the snapshot needs it from frame {}",
                opts.id,
                first_lsn.unwrap_or(0),
                fill_lsn + 1
            )));
        }
        if undecodable > 0 {
            log::error!(
                "shard {}: {undecodable} WAL frames had a valid checksum but could not be decoded",
                opts.id
            );
        }
        for t in topics.values_mut() {
            t.fill_holes = None;
            let durability = t.config.durability;
            if durability != Durability::Fsync && t.reserved_seq > t.head_seq {
                // Seqs up to the reservation may have been acknowledged by the previous run.
                t.head_seq = t.reserved_seq;
            }
            t.visible_seq = t.head_seq;
            if durability == Durability::Ephemeral {
                // An ephemeral topic's records never reach the disk.
                t.count = 0;
                t.bytes = 0;
                t.lose_through_head(LossReason::Restart);
            }
            t.expire(now);
        }
        log::info!(
            "shard {}: recovered {} topics from {}",
            opts.id,
            topics.len(),
            opts.dir.display()
        );
        opts.topic_gauge
            .store(topics.len(), std::sync::atomic::Ordering::Relaxed);
        opts.session_gauge
            .store(sessions.len(), std::sync::atomic::Ordering::Relaxed);
        if let Some(g) = opts.all_bytes_gauges.get(opts.id) {
            let bytes: u64 = topics.values().map(|t| t.bytes).sum();
            g.store(bytes, std::sync::atomic::Ordering::Relaxed);
        }
        let opts_max_queue = opts.max_queue;
        let shard = Rc::new(Shard {
            opts,
            topics: RefCell::new(topics),
            routers: RefCell::new(routers),
            sessions: RefCell::new(sessions),
            router_lock: glommio::sync::Semaphore::new(1),
            remote: RefCell::new(None),
            generation: Cell::new(1),
            ckpt: crate::checkpoint::CheckpointState::new(next_seg, state_lsn),
            wal,
            store,
            admission: crate::overload::Admission::new(opts_max_queue),
            requests: RefCell::new(Default::default()),
            scratch: RefCell::new(Vec::with_capacity(64 << 10)),
            ready: Cell::new(true),
            closed: Cell::new(false),
        });
        shard.remove_orphan_segments();
        shard.start_sweeper();
        shard.start_session_reaper();
        shard.start_checkpointer();
        Ok(shard)
    }

    /// Expires TTL'd records in the background, so expiry happens without new writes.
    pub fn start_sweeper(self: &Rc<Self>) {
        let weak = Rc::downgrade(self);
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(Duration::from_secs(1)).await;
                let Some(shard) = weak.upgrade() else {
                    return;
                };
                let now = now_ms();
                let mut topics = shard.topics.borrow_mut();
                let mut bytes = 0;
                for t in topics.values_mut() {
                    if t.config.ttl_ms > 0 {
                        t.expire(now);
                    }
                    bytes += t.bytes;
                }
                // Exact once a second; appends add to it in between.
                if let Some(g) = shard.opts.all_bytes_gauges.get(shard.opts.id) {
                    g.store(bytes, std::sync::atomic::Ordering::Relaxed);
                }
                // Durable Streams past their TTL or expiry go even if nobody asks for them.
                let expired: Vec<String> = topics
                    .iter()
                    .filter(|(_, t)| {
                        t.stream.as_ref().is_some_and(|s| {
                            !s.soft_deleted && s.expiry(t).is_some_and(|e| now >= e)
                        })
                    })
                    .map(|(name, _)| name.clone())
                    .collect();
                if !expired.is_empty() && shard.check_writable().is_ok() {
                    for name in expired {
                        shard.expire_stream(&mut topics, &name);
                    }
                }
                drop(topics);
                // Connections free their request buffers when they turn into long-lived
                // streams; give such freed pages back to the OS instead of keeping them.
                crate::checkpoint::release_free_memory();
            }
        })
        .detach();
    }

    pub fn is_ready(&self) -> bool {
        self.ready.get()
    }

    pub fn topic_count(&self) -> usize {
        self.topics.borrow().len()
    }

    fn update_gauge(&self, topics: &BTreeMap<String, Box<Topic>>) {
        self.opts
            .topic_gauge
            .store(topics.len(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Connects the shard to the others and starts its background work (router forwarders).
    pub fn start(self: &Rc<Self>, remote: Rc<dyn Remote>) {
        *self.remote.borrow_mut() = Some(remote);
        self.start_forwarders();
    }

    pub(crate) fn remote(&self) -> Result<Rc<dyn Remote>, ShardError> {
        self.remote.borrow().clone().ok_or(ShardError::NotReady)
    }

    pub(crate) fn next_generation(&self) -> u64 {
        let g = self.generation.get() + 1;
        self.generation.set(g);
        g
    }

    /// Refuses an append of `bytes` past `--max-retained-bytes` (all shards together; the
    /// count is exact once a second and grows with appends in between).
    fn check_bytes_cap(&self, bytes: u64) -> Result<(), ShardError> {
        let max = self.opts.max_retained_bytes;
        if max == 0 {
            return Ok(());
        }
        let total: u64 = self
            .opts
            .all_bytes_gauges
            .iter()
            .map(|g| g.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        if total + bytes > max {
            return Err(ShardError::ResourceCap {
                limit: "retained_bytes",
                max: max as usize,
            });
        }
        if let Some(g) = self.opts.all_bytes_gauges.get(self.opts.id) {
            g.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Refuses to create one more topic past `--max-topics` (all shards together).
    pub(crate) fn check_topic_cap_pub(&self) -> Result<(), ShardError> {
        self.check_topic_cap()
    }

    fn check_topic_cap(&self) -> Result<(), ShardError> {
        let max = self.opts.max_topics;
        if max == 0 {
            return Ok(());
        }
        let total: usize = self
            .opts
            .all_topic_gauges
            .iter()
            .map(|g| g.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        if total >= max {
            return Err(ShardError::ResourceCap {
                limit: "topics",
                max,
            });
        }
        Ok(())
    }

    /// Creates `topic` with defaults if missing; returns its visible head.
    pub(crate) fn ensure_topic(&self, topic: &str) -> u64 {
        let mut topics = self.topics.borrow_mut();
        if let Some(t) = topics.get(topic) {
            return t.visible_seq;
        }
        let op = Op::Config {
            topic: topic.to_string(),
            config: TopicConfig::defaults(self.opts.auto_create),
        };
        let lsn = self.log(&op, true);
        apply(&mut topics, &self.store, op, now_ms(), lsn);
        self.update_gauge(&topics);
        0
    }

    /// Encodes `op` into a WAL frame and queues it; returns its LSN.
    pub(crate) fn log(&self, op: &Op, urgent: bool) -> u64 {
        let mut buf = self.scratch.borrow_mut();
        buf.clear();
        op.encode(&mut buf);
        let lsn = self.wal.append(op.kind(), &buf, urgent);
        if buf.capacity() > (1 << 20) {
            *buf = Vec::with_capacity(64 << 10);
        }
        lsn
    }

    /// Waits until `lsn` is durable. While the WAL cannot be written for lack of space the
    /// frame stays queued and this keeps waiting (the write is neither lost nor reported as
    /// refused, since it will still happen), except once the shard is shutting down.
    pub(crate) async fn durable(&self, lsn: u64) -> Result<(), ShardError> {
        self.wal
            .wait_durable_while(lsn, || !self.closed.get())
            .await
            .map_err(|e| {
                if e.is_no_space() {
                    ShardError::DiskFull
                } else {
                    ShardError::Storage(e.0)
                }
            })
    }

    pub(crate) fn check_writable(&self) -> Result<(), ShardError> {
        if self.closed.get() {
            return Err(ShardError::ShuttingDown);
        }
        if let Some(e) = self.wal.failed() {
            return Err(ShardError::Storage(e.0));
        }
        // Out of space: refused before anything is logged or applied.
        if self.wal.no_space().is_some() || self.ckpt.no_space_backlog(self.opts.hot_tail_bytes) {
            return Err(ShardError::DiskFull);
        }
        Ok(())
    }

    /// Logs `op` unless the WAL has no room for it (see [`Wal::try_append`]); nothing is
    /// queued when it refuses.
    fn try_log(&self, op: &Op, urgent: bool) -> Result<u64, ShardError> {
        let mut buf = self.scratch.borrow_mut();
        buf.clear();
        op.encode(&mut buf);
        let r = self.wal.try_append(op.kind(), &buf, urgent);
        if buf.capacity() > (1 << 20) {
            *buf = Vec::with_capacity(64 << 10);
        }
        r.map_err(|_| ShardError::DiskFull)
    }

    /// Clean shutdown: refuse further writes, record every reserved-but-unused seq range as
    /// released, and sync the log. A restart after this continues exactly at each head.
    pub async fn shutdown(&self) -> Result<(), ShardError> {
        if self.closed.replace(true) {
            return Ok(());
        }
        if self.wal.failed().is_some() {
            return Ok(());
        }
        let mut last = self.wal.append(crate::wal::KIND_EPOCH, &[], true);
        {
            let mut topics = self.topics.borrow_mut();
            for (name, t) in topics.iter_mut() {
                if t.reserved_seq > t.head_seq {
                    let op = Op::Settle {
                        topic: name.clone(),
                        head: t.head_seq,
                    };
                    last = self.log(&op, true);
                    // Applied here too: the final snapshot records the settled state.
                    t.reserved_seq = t.head_seq;
                }
                // Wake long-polls so they answer now.
                t.changed.notify_all();
            }
        }
        self.durable(last).await?;
        // A final checkpoint, so the next start replays (almost) nothing.
        if let Err(e) = self.checkpoint().await {
            log::error!("shard {}: final checkpoint: {e}", self.opts.id);
        }
        Ok(())
    }

    /// Admits a request on `topic` under the overload bound (SPEC §9).
    async fn admit(
        &self,
        topic: &str,
        wait: bool,
    ) -> Result<(crate::overload::Ticket, Duration), ShardError> {
        // Under the bound everyone is admitted: look the topic up only when it matters.
        let priority = if self.admission.under_bound() {
            0
        } else {
            self.topics
                .borrow()
                .get(topic)
                .map_or(0, |t| crate::overload::effective_priority(t, now_ms()))
        };
        self.admission.admit(priority, wait).await
    }

    pub async fn execute(self: &Rc<Self>, cmd: Command) -> Reply {
        // Appends, diffs and claims count against this core's overload bound.
        let admitted = match &cmd {
            Command::Append(a) => Some(self.admit(&a.topic, a.disable_backpressure).await),
            Command::Diff(d) => Some(self.admit(&d.topic, false).await),
            Command::Claim(c) => Some(self.admit(&c.topic, false).await),
            _ => None,
        };
        let (_ticket, waited) = match admitted {
            Some(Ok((t, w))) => (Some(t), w),
            Some(Err(e)) => return Reply::Err(e),
            None => (None, Duration::ZERO),
        };
        let mut reply = self.execute_admitted(cmd).await;
        if let Reply::Appended(a) = &mut reply {
            a.timings.throttle_wait_ms = waited.as_secs_f64() * 1000.0;
        }
        reply
    }

    async fn execute_admitted(self: &Rc<Self>, cmd: Command) -> Reply {
        let r = match cmd {
            Command::PutTopic { topic, patch } => self.put_topic(topic, patch).await,
            Command::GetTopic { topic, touch } => self.get_topic(&topic, touch),
            Command::ListTopics {
                prefix,
                after,
                limit,
                allowed,
            } => Ok(self.list_topics(&prefix, after.as_deref(), limit, allowed.as_deref())),
            Command::DeleteTopic { topic, if_empty } => self.delete_topic(topic, if_empty).await,
            Command::Append(a) => self.append(a).await,
            Command::Diff(d) => self.diff(d).await,
            Command::DeleteRecords {
                topic,
                before_seq,
                matcher,
            } => self.delete_records(topic, before_seq, matcher).await,
            Command::PutRouter { name, config } => self.put_router(name, config).await,
            Command::InstallRouter { name, config } => self.install_router(name, config).await,
            Command::ListRouters(f) => Ok(self.list_routers(&f)),
            Command::DeleteRouter { name } => self.delete_router(&name),
            Command::RemoveRoutersFor { topic } => self.remove_routers_for(&topic),
            Command::CreateWatch { wid, spec } => self.create_watch(wid, spec).await,
            Command::OpenWatch { wid, rewind, key } => self.open_watch(&wid, rewind, key),
            Command::WatchProgress {
                wid,
                cursors,
                close,
            } => self.watch_progress(&wid, cursors, close),
            Command::Claim(c) => self.claim(c).await,
            Command::Stats => Ok(Reply::Stats(Box::new(self.stats()))),
            Command::Queue(c) => self.queue_cmd(c).await,
            Command::Stream(c) => self.stream_cmd(c).await,
        };
        r.unwrap_or_else(Reply::Err)
    }

    async fn put_topic(
        &self,
        topic: String,
        patch: crate::config::ConfigPatch,
    ) -> Result<Reply, ShardError> {
        let t0 = Instant::now();
        let (created, config, lsn) = {
            let mut topics = self.topics.borrow_mut();
            let existing = topics.get(&topic).map(|t| t.config.clone());
            let (created, config) = match existing {
                Some(cur) => {
                    let new = patch.apply(&cur);
                    if new.topic_type != cur.topic_type {
                        return Err(ShardError::TopicExistsIncompatible {
                            current: cur.topic_type,
                        });
                    }
                    if new == cur {
                        return Ok(Reply::Put(PutReply {
                            created: false,
                            config: new,
                            timings: Timings::default(),
                        }));
                    }
                    (false, new)
                }
                None => {
                    self.check_topic_cap()?;
                    (
                        true,
                        patch.apply(&TopicConfig::defaults(self.opts.auto_create)),
                    )
                }
            };
            self.check_writable()?;
            let op = Op::Config {
                topic,
                config: config.clone(),
            };
            let lsn = self.log(&op, true);
            apply(&mut topics, &self.store, op, now_ms(), lsn);
            self.update_gauge(&topics);
            (created, config, lsn)
        };
        let wal_append_ms = ms(t0.elapsed());
        let t1 = Instant::now();
        self.durable(lsn).await?;
        Ok(Reply::Put(PutReply {
            created,
            config,
            timings: Timings {
                wal_append_ms,
                fsync_ms: ms(t1.elapsed()),
                throttle_wait_ms: 0.0,
            },
        }))
    }

    fn get_topic(&self, topic: &str, touch: bool) -> Result<Reply, ShardError> {
        let mut topics = self.topics.borrow_mut();
        let t = topics.get_mut(topic).ok_or(ShardError::TopicNotFound)?;
        t.expire(now_ms());
        if touch {
            t.last_read_ts = now_ms();
        }
        Ok(Reply::Info(Box::new(TopicInfo {
            config: t.config.clone(),
            head_seq: t.visible_seq,
            earliest_seq: t.earliest_seq().min(t.visible_seq + 1),
            count: t.count,
            bytes: t.bytes,
            last_write_ts: t.last_write_ts,
            last_read_ts: t.last_read_ts,
            effective_priority: crate::overload::effective_priority(t, now_ms()),
            queue: crate::queue::info(t, now_ms()),
        })))
    }

    fn list_topics(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        allowed: Option<&[String]>,
    ) -> Reply {
        let mut topics = self.topics.borrow_mut();
        // Expiry is applied lazily by topic reads and by the sweeper; the list shows the
        // state as of the last sweep (at most a second old).
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a.to_owned()),
            _ => Bound::Included(prefix.to_owned()),
        };
        let out = topics
            .range_mut((start, Bound::Unbounded))
            .take_while(|(name, _)| name.starts_with(prefix))
            // Durable Streams are not `/v0` topics.
            .filter(|(name, _)| !name.starts_with(crate::stream::PREFIX))
            .filter(|(name, _)| {
                allowed.is_none_or(|a| a.iter().any(|p| name.starts_with(p.as_str())))
            })
            .take(limit)
            .map(|(name, t)| TopicSummary {
                topic: name.clone(),
                head_seq: t.visible_seq,
                earliest_seq: t.earliest_seq().min(t.visible_seq + 1),
                count: t.count,
                bytes: t.bytes,
                durable: t.config.durable(),
                effective_priority: crate::overload::effective_priority(t, now_ms()),
            })
            .collect();
        Reply::List(out)
    }

    async fn delete_topic(&self, topic: String, if_empty: bool) -> Result<Reply, ShardError> {
        let lsn = {
            let mut topics = self.topics.borrow_mut();
            let Some(t) = topics.get(&topic) else {
                return Ok(Reply::DeletedTopic { deleted: false });
            };
            if if_empty && t.count > 0 {
                return Err(ShardError::TopicNotEmpty { count: t.count });
            }
            self.check_writable()?;
            let op = Op::Drop {
                topic: topic.clone(),
            };
            let lsn = self.log(&op, true);
            apply(&mut topics, &self.store, op, now_ms(), lsn);
            self.update_gauge(&topics);
            lsn
        };
        self.durable(lsn).await?;
        Ok(Reply::DeletedTopic { deleted: true })
    }
}
