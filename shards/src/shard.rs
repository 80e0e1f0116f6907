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
/// A tag delete resolved ahead of logging: (topic instance, last seq it covers, hot-tail base
/// when its blocks were listed, (seq, size) of the victims in segments).
type ResolvedDelete = (u64, u64, u64, Vec<(u64, u64)>);

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
        } => {
            if let Some(t) = topics.get_mut(&topic) {
                t.apply_marked_append(first_seq, ts, idem_key.as_deref(), records, mark);
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
                drop(topics);
                // Connections free their request buffers when they turn into long-lived
                // streams; give such freed pages back to the OS instead of keeping them.
                crate::checkpoint::release_free_memory();
            }
        })
        .detach();
    }

    /// This core's figures for `/v0/metrics`.
    pub fn stats(&self) -> crate::metrics::ShardStats {
        let now = now_ms();
        let mut s = crate::metrics::ShardStats {
            shard: self.opts.id,
            topics_by_class: [0; 4],
            queues: 0,
            routers: self.routers.borrow().len() as u64,
            sessions: self.sessions.borrow().len() as u64,
            records: 0,
            bytes: 0,
            leases_in_flight: 0,
            hot_tail_bytes: 0,
            segments: self.store.list().len() as u64,
            checkpoints: self.ckpt.completed.get(),
            wal_frames: self.wal.stats.frames.get(),
            wal_flushes: self.wal.stats.flushes.get(),
            wal_bytes_written: self.wal.stats.bytes_written.get(),
            wal_rotations: self.wal.stats.rotations.get(),
            wal_pending_bytes: self.wal.pending_bytes(),
            fsync: self
                .wal
                .stats
                .sync_latency
                .borrow()
                .clone()
                .unwrap_or_else(crate::metrics::latency_histogram),
            requests: self.requests.borrow().clone(),
        };
        for t in self.topics.borrow().values() {
            let class = match t.config.durability {
                Durability::Fsync => 0,
                Durability::Disk => 1,
                Durability::Memory => 2,
                Durability::Ephemeral => 3,
            };
            s.topics_by_class[class] += 1;
            s.records += t.count;
            s.bytes += t.bytes;
            s.hot_tail_bytes += t.mem_bytes;
            if let Some(q) = &t.queue {
                s.queues += 1;
                s.leases_in_flight += q.in_flight(now);
            }
        }
        s
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

    async fn append(&self, cmd: AppendCmd) -> Result<Reply, ShardError> {
        let t0 = Instant::now();
        let now = now_ms();
        let AppendCmd {
            topic,
            records,
            idempotency_key,
            create,
            config,
            router_mark,
            ..
        } = cmd;
        let mut records = records;
        let (reply, wait_lsn, durability, changed) = {
            let mut topics = self.topics.borrow_mut();
            let mut created = false;
            if !topics.contains_key(&topic) {
                if !create.unwrap_or(self.opts.auto_create) {
                    return Err(ShardError::TopicNotFound);
                }
                self.check_topic_cap()?;
                self.check_writable()?;
                // Checked before the topic exists, so a refused write does not leave it behind.
                if self.opts.max_retained_bytes > 0 {
                    let total: u64 = records.iter().map(|r| r.size()).sum();
                    self.check_bytes_cap(total)?;
                }
                // Room for the records too, so a refused write does not leave its topic behind.
                let est: u64 = records.iter().map(|r| r.size() + 256).sum::<u64>() + 4096;
                self.wal
                    .room_for(est as usize)
                    .map_err(|_| ShardError::DiskFull)?;
                let base = TopicConfig::defaults(self.opts.auto_create);
                let config = config.map(|p| p.apply(&base)).unwrap_or(base);
                let op = Op::Config {
                    topic: topic.clone(),
                    config,
                };
                let lsn = self.log(&op, false);
                apply(&mut topics, &self.store, op, now, lsn);
                self.update_gauge(&topics);
                created = true;
            }
            let t = topics.get_mut(&topic).ok_or(ShardError::TopicNotFound)?;
            t.expire(now);
            if let Some(key) = idempotency_key.as_deref() {
                if let Some(e) = t.idem_lookup(key, now) {
                    return Ok(Reply::Appended(AppendReply {
                        created: false,
                        deduped: true,
                        first_seq: e.first_seq,
                        last_seq: e.last_seq,
                        head_seq: t.visible_seq,
                        timings: Timings::default(),
                    }));
                }
            }
            let mut mark = None;
            if let Some(m) = router_mark {
                let have = t.router_marks.get(m.router.as_str()).copied().unwrap_or(0);
                if have > 0 {
                    records = records
                        .into_iter()
                        .zip(m.src_seqs.iter())
                        .filter(|(_, s)| **s > have)
                        .map(|(r, _)| r)
                        .collect();
                }
                if records.is_empty() {
                    return Ok(Reply::Appended(AppendReply {
                        created,
                        deduped: true,
                        first_seq: t.head_seq,
                        last_seq: t.head_seq,
                        head_seq: t.visible_seq,
                        timings: Timings::default(),
                    }));
                }
                mark = m.src_seqs.last().map(|s| (m.router, *s));
            }
            let n = records.len() as u64;
            let bytes: u64 = records.iter().map(|r| r.size()).sum();
            if t.would_reject(n, bytes) {
                return Err(ShardError::TopicFull {
                    cap_records: t.config.cap_records,
                    cap_bytes: t.config.cap_bytes,
                });
            }
            if !created {
                self.check_bytes_cap(bytes)?;
            }
            self.check_writable()?;
            let first_seq = t.head_seq + 1;
            let last_seq = t.head_seq + n;
            let ts = now.max(t.last_ts);
            let durability = t.config.durability;
            let wait_lsn = if durability == Durability::Ephemeral {
                let op = Op::Skipped {
                    topic: topic.clone(),
                    first_seq,
                    count: n,
                    ts,
                    idem_key: idempotency_key.clone(),
                };
                let lsn = self.try_log(&op, false)?;
                t.apply_marked_append(first_seq, ts, idempotency_key.as_deref(), records, mark);
                lsn
            } else {
                let op = Op::Append {
                    topic: topic.clone(),
                    first_seq,
                    ts,
                    idem_key: idempotency_key,
                    records,
                    mark,
                };
                // All or nothing: refused here (nothing applied) when the WAL has no room.
                let lsn = self.try_log(&op, durability == Durability::Fsync)?;
                if let Op::Append {
                    idem_key,
                    records,
                    mark,
                    ..
                } = op
                {
                    t.apply_marked_append(first_seq, ts, idem_key.as_deref(), records, mark);
                }
                lsn
            };
            if durability != Durability::Ephemeral {
                self.ckpt.note_append(
                    bytes + n * crate::topic::SLOT_OVERHEAD,
                    self.opts.hot_tail_bytes,
                );
            }
            let wait_lsn = if durability == Durability::Fsync {
                Some(wait_lsn)
            } else {
                let durable_lsn = self.wal.durable_lsn();
                // Renew the reservation once half of it is used, so that in a steady stream
                // the next one is on disk before anyone needs it.
                if last_seq + t.reservation.window / 2 > t.reserved_seq {
                    let upto = last_seq + t.reservation.window.max(2 * n);
                    let op = Op::Reserve {
                        topic: topic.clone(),
                        upto,
                    };
                    let lsn = self.log(&op, true);
                    t.reserved_seq = upto;
                    t.reservation.pending.push_back((lsn, upto));
                }
                t.visible_seq = t.head_seq;
                t.unsynced.push_back((wait_lsn, first_seq));
                while t.unsynced.front().is_some_and(|(l, _)| *l <= durable_lsn) {
                    t.unsynced.pop_front();
                }
                t.reservation.wait_for(last_seq, durable_lsn)
            };
            let reply = AppendReply {
                created,
                deduped: false,
                first_seq,
                last_seq,
                head_seq: t.visible_seq,
                timings: Timings::default(),
            };
            (reply, wait_lsn, durability, t.changed.clone())
        };
        if durability != Durability::Fsync {
            changed.notify_all();
        }
        // Records arrive faster than checkpoints move them to segments: hold the reply
        // until memory is back within bounds.
        self.ckpt.backpressure(self.opts.hot_tail_bytes).await;
        let mut reply = reply;
        reply.timings.wal_append_ms = ms(t0.elapsed());
        if let Some(lsn) = wait_lsn {
            let t1 = Instant::now();
            self.durable(lsn).await?;
            if durability == Durability::Fsync {
                reply.timings.fsync_ms = ms(t1.elapsed());
                let mut topics = self.topics.borrow_mut();
                if let Some(t) = topics.get_mut(&topic) {
                    if t.head_seq >= reply.last_seq && t.visible_seq < reply.last_seq {
                        t.visible_seq = reply.last_seq;
                    }
                    reply.head_seq = t.visible_seq.max(reply.last_seq);
                }
                drop(topics);
                changed.notify_all();
            }
        }
        Ok(Reply::Appended(reply))
    }

    /// Reads a topic's records into `st` from its hot tail and its segments. `created`
    /// names the topic instance; a read of an instance since dropped fails with not found.
    pub(crate) async fn read_records(
        &self,
        topic: &str,
        created: u64,
        st: &mut ReadState,
        nodes: &[String],
    ) -> Result<(), ShardError> {
        let mut stalled = 0;
        loop {
            let before = (st.next, st.out.len());
            let fetch = {
                let topics = self.topics.borrow();
                let t = topics
                    .get(topic)
                    .filter(|t| t.created_lsn == created)
                    .ok_or(ShardError::TopicNotFound)?;
                match t.read_step(st, nodes) {
                    None => return Ok(()),
                    Some(f) => f,
                }
            };
            // The blocks are read concurrently: one device round trip, not one per block.
            let reads: Vec<_> = fetch
                .into_iter()
                .map(|b| {
                    let store = self.store.clone();
                    glommio::spawn_local(async move {
                        let r = store.read_block(&b).await;
                        (b, r)
                    })
                })
                .collect();
            let mut fetched = Vec::with_capacity(reads.len());
            for read in reads {
                let (b, r) = read.await;
                match r {
                    Ok(recs) => fetched.push((b, recs)),
                    // Compaction replaced the block (and removed its file): plan again.
                    Err(_) if !self.block_current(topic, created, &b) => break,
                    Err(e) => return Err(ShardError::Storage(e)),
                }
            }
            let topics = self.topics.borrow();
            let t = topics
                .get(topic)
                .filter(|t| t.created_lsn == created)
                .ok_or(ShardError::TopicNotFound)?;
            // False when compaction replaced a block meanwhile: plan again.
            let _ = t.absorb(st, fetched, nodes);
            if (st.next, st.out.len()) == before {
                stalled += 1;
                if stalled > 16 {
                    log::warn!("read of {topic:?} made no progress at seq {}", st.next);
                    return Ok(());
                }
            } else {
                stalled = 0;
            }
        }
    }

    async fn diff(&self, cmd: DiffCmd) -> Result<Reply, ShardError> {
        let deadline = Instant::now() + Duration::from_millis(cmd.wait_ms);
        loop {
            let (mut st, created, head, earliest, tombstone, dedupe_node) = {
                let mut topics = self.topics.borrow_mut();
                let t = topics
                    .get_mut(&cmd.topic)
                    .ok_or(ShardError::TopicNotFound)?;
                let now = now_ms();
                t.expire(now);
                t.last_read_ts = now;
                let visible = t.visible_seq;
                let head = if cmd.durable_only {
                    t.durable_seq(self.wal.durable_lsn()).0
                } else {
                    visible
                };
                let earliest = t.earliest_seq().min(visible + 1);
                let (from, tombstone) = if cmd.from_seq > visible {
                    let gap_to = if t.evict_floor > 1 { earliest - 1 } else { 0 };
                    let tomb = Tombstone {
                        gap_from: 1,
                        gap_to,
                        reason: "recreated",
                        missed_estimate: gap_to,
                    };
                    (0, Some(tomb))
                } else if t.evict_floor > cmd.from_seq + 1 {
                    let gap_from = cmd.from_seq + 1;
                    let gap_to = earliest - 1;
                    let tomb = Tombstone {
                        gap_from,
                        gap_to,
                        reason: t.evict_reason.unwrap_or(LossReason::Cap).as_str(),
                        missed_estimate: (gap_to + 1).saturating_sub(gap_from),
                    };
                    (cmd.from_seq, Some(tomb))
                } else {
                    (cmd.from_seq, None)
                };
                let st = ReadState::new(from, cmd.limit, head);
                let dedupe = t.config.dedupe_node;
                (st, t.created_lsn, head, earliest, tombstone, dedupe)
            };
            let nodes: &[String] = if dedupe_node { &cmd.nodes } else { &[] };
            self.read_records(&cmd.topic, created, &mut st, nodes)
                .await?;
            let caught_up = st.next >= head;
            if !st.out.is_empty() || tombstone.is_some() || !caught_up || Instant::now() >= deadline
            {
                let r = st.finish();
                return Ok(Reply::Diff(DiffReply {
                    records: r.records,
                    next_from_seq: r.next_from_seq,
                    head_seq: head,
                    earliest_seq: earliest,
                    tombstone,
                    scanned: r.scanned,
                    dedupe_node,
                }));
            }
            let (changed, durable_wait) = {
                let mut topics = self.topics.borrow_mut();
                let t = topics
                    .get_mut(&cmd.topic)
                    .ok_or(ShardError::TopicNotFound)?;
                // Anything new since the read? Then read again at once.
                let now_head = if cmd.durable_only {
                    t.durable_seq(self.wal.durable_lsn())
                } else {
                    (t.visible_seq, None)
                };
                if now_head.0 != head || t.created_lsn != created {
                    continue;
                }
                (t.changed.clone(), now_head.1)
            };
            let listener = changed.listen();
            let timeout = glommio::timer::sleep(deadline.saturating_duration_since(Instant::now()));
            let woken = futures_lite::future::or(listener, async {
                timeout.await;
            });
            match durable_wait {
                Some(lsn) => {
                    futures_lite::future::or(woken, async {
                        let _ = self.wal.wait_durable(lsn).await;
                    })
                    .await
                }
                None => woken.await,
            }
        }
    }

    /// Whether `b` is still one of the topic instance's blocks.
    fn block_current(&self, topic: &str, created: u64, b: &crate::segment::BlockRef) -> bool {
        self.topics
            .borrow()
            .get(topic)
            .filter(|t| t.created_lsn == created)
            .is_some_and(|t| {
                t.blocks
                    .iter()
                    .any(|x| x.seg == b.seg && x.offset == b.offset)
            })
    }

    /// A tag delete's victims among the records in segments: (topic instance, last seq it
    /// covers, the hot tail's base when the blocks were listed, victims). `None` when
    /// checkpoints kept moving the blocks; the caller then resolves synchronously.
    async fn resolve_tag_delete(
        &self,
        topic: &str,
        before_seq: Option<u64>,
        m: &crate::topic::TagMatch,
    ) -> Result<Option<ResolvedDelete>, ShardError> {
        'attempt: for _ in 0..5 {
            let (created, upto, mem_base, blocks) = {
                let mut topics = self.topics.borrow_mut();
                let t = topics.get_mut(topic).ok_or(ShardError::TopicNotFound)?;
                t.expire(now_ms());
                let limit = before_seq
                    .map(|b| b.saturating_sub(1))
                    .unwrap_or(u64::MAX)
                    .min(t.head_seq);
                let (_, blocks) = t.delete_candidates(m, limit);
                (t.created_lsn, limit, t.mem_base(), blocks)
            };
            let mut victims = Vec::new();
            for b in &blocks {
                let recs = match self.store.read_block(b).await {
                    Ok(r) => r,
                    Err(_) if !self.block_current(topic, created, b) => continue 'attempt,
                    Err(e) => return Err(ShardError::Storage(e)),
                };
                victims.extend(
                    recs.iter()
                        .filter(|r| r.seq <= upto && m.matches(r.tag.as_deref()))
                        .map(|r| (r.seq, r.size())),
                );
            }
            // Every block listed must still be there: compaction may have moved records.
            if blocks.iter().all(|b| self.block_current(topic, created, b)) {
                return Ok(Some((created, upto, mem_base, victims)));
            }
        }
        Ok(None)
    }

    async fn delete_records(
        &self,
        topic: String,
        before_seq: Option<u64>,
        matcher: Option<crate::topic::TagMatch>,
    ) -> Result<Reply, ShardError> {
        let t0 = Instant::now();
        // A tag delete first finds its victims among the records in segments (reading their
        // blocks), then logs them by seq; a `before_seq` delete is logged as such.
        let mut resolved = None;
        if let Some(m) = &matcher {
            resolved = self.resolve_tag_delete(&topic, before_seq, m).await?;
        }
        let (mut reply, wait) = {
            let mut topics = self.topics.borrow_mut();
            let t = topics.get_mut(&topic).ok_or(ShardError::TopicNotFound)?;
            t.expire(now_ms());
            self.check_writable()?;
            let durable = t.config.durability == Durability::Fsync;
            let (op, lsn) = match (resolved, &matcher) {
                (Some((created, upto, mem_base, mut victims)), Some(m)) => {
                    if t.created_lsn != created {
                        return Err(ShardError::TopicNotFound);
                    }
                    if t.mem_base() > mem_base {
                        // A checkpoint moved records out of memory while the blocks were
                        // read; resolve against the current state instead.
                        victims.clear();
                        let op = Op::Delete {
                            topic: topic.clone(),
                            before_seq,
                            matcher: matcher.clone(),
                            upto_seq: upto,
                        };
                        let lsn = self.log(&op, durable);
                        (op, lsn)
                    } else {
                        let (mem, _) = t.delete_candidates(m, upto);
                        victims.extend(mem);
                        victims.sort_unstable();
                        victims.dedup_by_key(|v| v.0);
                        let op = Op::DeleteSeqs {
                            topic: topic.clone(),
                            victims,
                        };
                        let lsn = self.log(&op, durable);
                        (op, lsn)
                    }
                }
                _ => {
                    let op = Op::Delete {
                        topic: topic.clone(),
                        before_seq,
                        matcher: matcher.clone(),
                        upto_seq: t.head_seq,
                    };
                    let lsn = self.log(&op, durable);
                    (op, lsn)
                }
            };
            let deleted = match op {
                Op::Delete {
                    before_seq,
                    matcher,
                    upto_seq,
                    ..
                } => t.delete_records(before_seq, matcher.as_ref(), upto_seq),
                Op::DeleteSeqs { victims, .. } => t.delete_seqs(&victims),
                _ => 0,
            };
            let reply = DeleteReply {
                deleted,
                earliest_seq: t.earliest_seq().min(t.visible_seq + 1),
                head_seq: t.visible_seq,
                count: t.count,
                bytes: t.bytes,
                timings: Timings::default(),
            };
            (reply, durable.then_some(lsn))
        };
        reply.timings.wal_append_ms = ms(t0.elapsed());
        if let Some(lsn) = wait {
            let t1 = Instant::now();
            self.durable(lsn).await?;
            reply.timings.fsync_ms = ms(t1.elapsed());
        }
        Ok(Reply::DeletedRecords(reply))
    }
}
