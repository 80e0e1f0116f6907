//! Checkpoints: records move from the WAL into segment files, segments with much dead space
//! are compacted, the core's state is written as a snapshot, and the WAL files and segment
//! space the snapshot no longer needs are given back.
//!
//! One checkpoint runs at a time, in the background:
//!
//! 1. At WAL position `fill_lsn`, without yielding, it takes every topic's records not yet in
//!    a segment (cheap: payloads are shared) and picks the blocks to compact.
//! 2. It encodes them into one new segment file, written through DMA and synced.
//! 3. It installs the new blocks in the topics' indexes; records deleted or evicted in the
//!    meantime are accounted as such, and a topic recreated meantime is left alone.
//! 4. It drops hot-tail records already in segments, least recently used topics first, until
//!    the hot tail is within half its budget.
//! 5. At WAL position `state_lsn` it encodes the state, waits for the WAL to be durable up to
//!    there and writes the snapshot atomically.
//! 6. WAL files before `fill_lsn` are retired (kept as spares for reuse), segment files no
//!    block refers to are removed, and the dead ranges of the others are punched out.
//!
//! A crash at any step leaves the previous snapshot and every WAL frame after it, so nothing
//! acknowledged is lost and nothing deleted comes back.

use crate::codec::{Dec, Enc};
use crate::config::{Durability, TopicConfig};
use crate::event::Event;
use crate::ops::{Op, K_ROUTER_PUT, K_WATCH_PUT};
use crate::router::{apply_router, RouterState};
use crate::segment::{self, BlockRef, Entry, Store};
use crate::shard::Shard;
use crate::snapshot::{self, E_ROUTER, E_SESSION, E_TOPIC};
use crate::topic::{Record, Topic};
use crate::wal::WalError;
use crate::watch::{apply_watch, Session};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// WAL growth that starts a checkpoint, so replay after a crash stays short.
const WAL_TRIGGER: u64 = 64 << 20;
/// Most bytes of old blocks one checkpoint rewrites.
const COMPACT_BUDGET: u64 = 64 << 20;
const ALIGN: u64 = 4096;
/// Segments smaller than this are merged once there are more than [`MAX_SMALL_SEGMENTS`].
const SMALL_SEGMENT: u64 = 4 << 20;
const MAX_SMALL_SEGMENTS: usize = 8;

pub struct CheckpointState {
    lock: glommio::sync::Semaphore,
    next_seg: Cell<u64>,
    /// The `state_lsn` of the newest snapshot.
    last_lsn: Cell<u64>,
    last_at: Cell<Instant>,
    wal_mark: Cell<u64>,
    /// Bytes (with overhead) appended since the last checkpoint began.
    unflushed: Cell<u64>,
    wake: Event,
    done: Event,
    /// Size of each segment file, and the bytes of it referenced when holes were last punched.
    seg_sizes: RefCell<BTreeMap<u64, (u64, u64)>>,
    pub completed: Cell<u64>,
    snapshot_bytes: Cell<u64>,
    /// Whether the last checkpoint failed for lack of disk space.
    no_space: Cell<bool>,
}

#[derive(PartialEq, Clone, Copy)]
enum Due {
    No,
    Flush,
    Snapshot,
}

impl CheckpointState {
    pub fn new(next_seg: u64, last_lsn: u64) -> Self {
        CheckpointState {
            lock: glommio::sync::Semaphore::new(1),
            next_seg: Cell::new(next_seg.max(1)),
            last_lsn: Cell::new(last_lsn),
            last_at: Cell::new(Instant::now()),
            wal_mark: Cell::new(0),
            unflushed: Cell::new(0),
            wake: Event::new(),
            done: Event::new(),
            seg_sizes: RefCell::new(BTreeMap::new()),
            completed: Cell::new(0),
            snapshot_bytes: Cell::new(0),
            no_space: Cell::new(false),
        }
    }

    /// Counts an append toward the next checkpoint, and starts one once half the hot tail
    /// is waiting for it.
    pub fn note_append(&self, bytes: u64, budget: u64) {
        let u = self.unflushed.get() + bytes;
        self.unflushed.set(u);
        if u > budget / 2 {
            self.wake.notify_all();
        }
    }

    /// Whether writes should be refused for lack of space: checkpoints fail for lack of space
    /// and more than twice the hot-tail budget is waiting for one (memory would grow without
    /// bound otherwise).
    pub fn no_space_backlog(&self, budget: u64) -> bool {
        self.no_space.get() && self.unflushed.get() > budget.saturating_mul(2)
    }

    /// Waits while twice the hot-tail budget is waiting for a checkpoint (bounded, so a
    /// failing disk cannot stall writers forever; the WAL reports its own failures).
    pub async fn backpressure(&self, budget: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.unflushed.get() > budget.saturating_mul(2) && Instant::now() < deadline {
            self.wake.notify_all();
            let l = self.done.listen();
            futures_lite::future::or(l, glommio::timer::sleep(Duration::from_millis(100))).await;
        }
    }
}

/// Loads the entries of a snapshot into empty state.
pub fn load_entries(
    snap: &snapshot::Loaded,
    store: &Rc<Store>,
    now: u64,
    topics: &mut BTreeMap<String, Box<Topic>>,
    routers: &mut BTreeMap<String, RouterState>,
    sessions: &mut BTreeMap<String, Session>,
) -> Result<usize, WalError> {
    let bad = || {
        WalError(format!(
            "snapshot {}: undecodable entry",
            snap.path.display()
        ))
    };
    let mut n = 0;
    for (kind, bytes) in snap.entries() {
        match kind {
            E_TOPIC => {
                let mut d = Dec::new(bytes);
                let name = d.str().ok_or_else(bad)?.to_owned();
                let config = TopicConfig::decode(&mut d).ok_or_else(bad)?;
                let t = Topic::decode_state(&mut d, config, store.clone(), now).ok_or_else(bad)?;
                topics.insert(name, Box::new(t));
            }
            E_ROUTER => apply_router(routers, Op::decode(K_ROUTER_PUT, bytes).ok_or_else(bad)?, 0),
            E_SESSION => apply_watch(
                sessions,
                Op::decode(K_WATCH_PUT, bytes).ok_or_else(bad)?,
                now,
            ),
            _ => return Err(bad()),
        }
        n += 1;
    }
    Ok(n)
}

struct Flush {
    topic: String,
    created: u64,
    to: u64,
    records: Vec<Record>,
}

type NewBlocks = Vec<(BlockRef, Rc<[Entry]>)>;
/// Byte ranges of each segment that blocks refer to.
type SegmentRanges = BTreeMap<u64, Vec<(u64, u64)>>;

fn encode_blocks(buf: &mut Vec<u8>, seg: u64, records: &[Record]) -> NewBlocks {
    segment::chunks(records)
        .map(|c| (segment::encode_block(buf, seg, c), segment::entries_of(c)))
        .collect()
}

impl Shard {
    /// Removes segment files no topic refers to (left by a checkpoint a crash interrupted)
    /// and learns the sizes of the others.
    pub(crate) fn remove_orphan_segments(&self) {
        let referenced: BTreeSet<u64> = self
            .topics
            .borrow()
            .values()
            .flat_map(|t| t.blocks.iter().map(|b| b.seg))
            .collect();
        let mut sizes = self.ckpt.seg_sizes.borrow_mut();
        let mut max = 0;
        for seg in self.store.list() {
            max = max.max(seg);
            if referenced.contains(&seg) {
                let path = self.store.dir().join(segment::seg_name(seg));
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                // Unknown what was punched before the restart: punch its gaps once.
                sizes.insert(seg, (size, u64::MAX));
            } else {
                log::info!(
                    "shard {}: removing unreferenced segment {seg}",
                    self.opts.id
                );
                self.store.remove(seg);
            }
        }
        for seg in &referenced {
            if !sizes.contains_key(seg) {
                log::error!(
                    "shard {}: segment {seg} is missing; its records cannot be read",
                    self.opts.id
                );
            }
        }
        if max >= self.ckpt.next_seg.get() {
            self.ckpt.next_seg.set(max + 1);
        }
    }

    /// Runs checkpoints in the background when they are due.
    pub(crate) fn start_checkpointer(self: &Rc<Self>) {
        let weak = Rc::downgrade(self);
        glommio::spawn_local(async move {
            loop {
                let Some(shard) = weak.upgrade() else {
                    return;
                };
                let l = shard.ckpt.wake.listen();
                let tick = shard
                    .opts
                    .checkpoint_interval
                    .min(Duration::from_secs(1))
                    .max(Duration::from_millis(10));
                futures_lite::future::or(l, glommio::timer::sleep(tick)).await;
                if shard.closed.get() {
                    return;
                }
                let due = shard.checkpoint_due();
                if due != Due::No {
                    match shard.run_checkpoint(due == Due::Snapshot).await {
                        Ok(()) => {
                            if shard.ckpt.no_space.replace(false) {
                                log::info!("shard {}: checkpoints succeed again", shard.opts.id);
                            }
                        }
                        Err(e) if crate::wal::is_no_space(&e) => {
                            // Retried (every second) until space returns; the WAL keeps
                            // everything meanwhile.
                            if !shard.ckpt.no_space.replace(true) {
                                log::warn!(
                                    "shard {}: checkpoint failed for lack of space: {e}",
                                    shard.opts.id
                                );
                            }
                            glommio::timer::sleep(Duration::from_secs(1)).await;
                        }
                        Err(e) => {
                            log::error!("shard {}: checkpoint failed: {e}", shard.opts.id);
                            glommio::timer::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }
        })
        .detach();
    }

    fn checkpoint_due(&self) -> Due {
        let c = &self.ckpt;
        let dirty = self.wal.last_lsn() > c.last_lsn.get();
        // Replay after a crash is bounded by the WAL written since the last snapshot; with a
        // large snapshot, let more WAL accumulate so snapshots stay a small part of the I/O.
        let wal_trigger = WAL_TRIGGER.max(4 * c.snapshot_bytes.get());
        if self.wal.appended_bytes().saturating_sub(c.wal_mark.get()) > wal_trigger
            || (dirty && c.last_at.get().elapsed() >= self.opts.checkpoint_interval)
        {
            Due::Snapshot
        } else if c.unflushed.get() > self.opts.hot_tail_bytes / 2 {
            Due::Flush
        } else {
            Due::No
        }
    }

    /// Runs one full checkpoint now (waiting for one in progress to finish first).
    pub async fn checkpoint(&self) -> Result<(), String> {
        self.run_checkpoint(true).await
    }

    /// A flush moves records to a segment and sheds memory; a full checkpoint also compacts,
    /// writes a snapshot and gives back WAL files and dead segment space.
    async fn run_checkpoint(&self, snapshot: bool) -> Result<(), String> {
        let _permit = self
            .ckpt
            .lock
            .acquire_permit(1)
            .await
            .map_err(|e| format!("checkpoint lock: {e}"))?;
        let r = self.checkpoint_locked(snapshot).await;
        self.ckpt.done.notify_all();
        r
    }

    async fn checkpoint_locked(&self, full: bool) -> Result<(), String> {
        let c = &self.ckpt;
        if self.wal.failed().is_some() {
            return Err("the WAL has failed".into());
        }
        if full {
            c.last_at.set(Instant::now());
            c.wal_mark.set(self.wal.appended_bytes());
        }
        // 1. Capture, at fill_lsn, without yielding.
        let fill_lsn = self.wal.last_lsn();
        let unflushed = c.unflushed.replace(0);
        let seg_id = c.next_seg.get();
        c.next_seg.set(seg_id + 1);
        let mut flushes = Vec::new();
        let mut compact: Vec<(String, u64, Vec<BlockRef>)> = Vec::new();
        {
            let topics = self.topics.borrow();
            let victims = if full {
                self.compaction_victims(&topics)
            } else {
                BTreeSet::new()
            };
            let mut budget = COMPACT_BUDGET;
            for (name, t) in topics.iter() {
                if t.durability() != Durability::Ephemeral && t.head_seq > t.flushed_seq {
                    let (to, records) = t.unflushed();
                    flushes.push(Flush {
                        topic: name.clone(),
                        created: t.created_lsn,
                        to,
                        records,
                    });
                }
                // Runs of consecutive victim blocks are rewritten together, so small blocks
                // merge into full ones.
                let mut run: Vec<BlockRef> = Vec::new();
                for b in t.blocks.iter().map(Some).chain([None]) {
                    match b {
                        Some(b) if victims.contains(&b.seg) && budget >= b.len as u64 => {
                            budget -= b.len as u64;
                            run.push(BlockRef {
                                entries: None,
                                ..b.clone()
                            });
                        }
                        _ => {
                            if !run.is_empty() {
                                compact.push((
                                    name.clone(),
                                    t.created_lsn,
                                    std::mem::take(&mut run),
                                ));
                            }
                        }
                    }
                }
            }
        }
        // 2. Encode and write the new segment.
        let mut buf = Vec::new();
        let mut installs = Vec::with_capacity(flushes.len());
        for f in flushes {
            let blocks = encode_blocks(&mut buf, seg_id, &f.records);
            installs.push((f.topic, f.created, f.to, blocks));
            glommio::yield_if_needed().await;
        }
        let mut rewrites = Vec::with_capacity(compact.len());
        'runs: for (name, created, old) in compact {
            let mut recs = Vec::new();
            for b in &old {
                match self.store.read_block(b).await {
                    Ok(r) => recs.extend(r.iter().cloned()),
                    Err(e) => {
                        log::error!("compaction: {e}");
                        continue 'runs;
                    }
                }
            }
            let (keep, dropped): (Vec<Record>, Vec<Record>) = {
                let topics = self.topics.borrow();
                let Some(t) = topics.get(&name).filter(|t| t.created_lsn == created) else {
                    continue 'runs;
                };
                recs.into_iter().partition(|r| !t.gone_in_segment(r.seq))
            };
            let blocks = encode_blocks(&mut buf, seg_id, &keep);
            let dropped: Vec<u64> = dropped.iter().map(|r| r.seq).collect();
            rewrites.push((name, created, old, blocks, dropped));
        }
        if !buf.is_empty() {
            if let Err(e) = self.store.write(seg_id, &buf).await {
                // Nothing was installed: the records are still waiting for a checkpoint.
                c.unflushed.set(c.unflushed.get() + unflushed);
                return Err(e);
            }
            c.seg_sizes
                .borrow_mut()
                .insert(seg_id, (buf.len() as u64, buf.len() as u64));
        }
        drop(buf);
        // 3. Install the blocks; 4. shed memory.
        {
            let mut topics = self.topics.borrow_mut();
            for (name, created, to, blocks) in installs {
                if let Some(t) = topics.get_mut(&name).filter(|t| t.created_lsn == created) {
                    t.install_flush(to, blocks);
                }
            }
            for (name, created, old, blocks, dropped) in rewrites {
                if let Some(t) = topics.get_mut(&name).filter(|t| t.created_lsn == created) {
                    t.install_compacted(&old, blocks, &dropped);
                }
            }
            self.shed_memory(&mut topics);
        }
        release_free_memory();
        if !full {
            // Without a snapshot the new segment is not yet referenced on disk: after a
            // crash the WAL (still all there) gives its records back and it is removed.
            return Ok(());
        }
        // 5. The snapshot.
        let state_lsn = self.wal.last_lsn();
        let (bytes, referenced) = self.encode_snapshot(fill_lsn, state_lsn);
        // While the WAL stalls for lack of space, give up now rather than hold the
        // checkpoint lock until space returns; the next checkpoint takes over.
        self.wal
            .wait_durable_while(state_lsn, || false)
            .await
            .map_err(|e| e.to_string())?;
        snapshot::write(self.store.dir(), state_lsn, &bytes).await?;
        c.last_lsn.set(state_lsn);
        c.snapshot_bytes.set(bytes.len() as u64);
        drop(bytes);
        // 6. Give back what the snapshot no longer needs.
        let retired = self.wal.retire_through(fill_lsn);
        self.release_segments(referenced);
        c.completed.set(c.completed.get() + 1);
        log::debug!(
            "shard {}: checkpoint at {state_lsn} (segment {seg_id}, {retired} WAL files retired)",
            self.opts.id
        );
        Ok(())
    }

    /// Segments less than half of which is still referenced, and small segments once there
    /// are several (each checkpoint writes one; merging keeps their number bounded).
    fn compaction_victims(&self, topics: &BTreeMap<String, Box<Topic>>) -> BTreeSet<u64> {
        let mut live: BTreeMap<u64, u64> = BTreeMap::new();
        for t in topics.values() {
            for b in &t.blocks {
                *live.entry(b.seg).or_default() +=
                    b.len as u64 * b.live as u64 / (b.count.max(1)) as u64;
            }
        }
        let sizes = self.ckpt.seg_sizes.borrow();
        let small: Vec<u64> = sizes
            .iter()
            .filter(|(_, (size, _))| *size < SMALL_SEGMENT)
            .map(|(seg, _)| *seg)
            .collect();
        let mut out: BTreeSet<u64> = sizes
            .iter()
            .filter(|(seg, (size, _))| {
                let l = live.get(seg).copied().unwrap_or(0);
                l > 0 && l * 2 < *size
            })
            .map(|(seg, _)| *seg)
            .collect();
        if small.len() > MAX_SMALL_SEGMENTS {
            out.extend(small);
        }
        out
    }

    /// Drops hot-tail records already in segments, least recently used topics first, until
    /// the hot tail is within half its budget; forgets block entries no longer needed.
    fn shed_memory(&self, topics: &mut BTreeMap<String, Box<Topic>>) {
        let target = self.opts.hot_tail_bytes / 2;
        let mut total: u64 = topics.values().map(|t| t.mem_bytes).sum();
        if total > target {
            let mut order: Vec<(u64, String)> = topics
                .iter()
                .filter(|(_, t)| t.mem_bytes > 0)
                .map(|(n, t)| (t.last_read_ts.max(t.last_write_ts), n.clone()))
                .collect();
            order.sort_unstable();
            for (_, name) in order {
                if total <= target {
                    break;
                }
                if let Some(t) = topics.get_mut(&name) {
                    total = total.saturating_sub(t.drop_cached());
                }
            }
        }
        let durable = self.wal.durable_lsn();
        for t in topics.values_mut() {
            t.trim_memory(durable);
        }
    }

    /// Encodes the state as a snapshot; also returns the block ranges it refers to.
    fn encode_snapshot(&self, fill_lsn: u64, state_lsn: u64) -> (Vec<u8>, SegmentRanges) {
        let mut w = snapshot::Writer::new(fill_lsn, state_lsn, self.ckpt.next_seg.get());
        let mut refs = SegmentRanges::new();
        for (name, t) in self.topics.borrow().iter() {
            w.entry(E_TOPIC, |b| {
                Enc(b).bytes(name.as_bytes());
                t.config.encode(b);
                t.encode_state(&mut Enc(b));
            });
            for b in &t.blocks {
                refs.entry(b.seg)
                    .or_default()
                    .push((b.offset, b.offset + b.len as u64));
            }
        }
        for (name, r) in self.routers.borrow().iter() {
            let op = Op::RouterPut {
                topic: name.clone(),
                config: r.config.clone(),
                cursor: r.cursor,
                forwarded: r.forwarded,
            };
            w.entry(E_ROUTER, |b| op.encode(b));
        }
        for (wid, s) in self.sessions.borrow().iter() {
            let op = Op::WatchPut {
                topic: wid.clone(),
                spec: s.spec.clone(),
            };
            w.entry(E_SESSION, |b| op.encode(b));
        }
        (w.finish(), refs)
    }

    /// Removes segment files the snapshot does not refer to and punches the ranges of the
    /// others that no block refers to, giving their disk space back.
    fn release_segments(&self, mut refs: SegmentRanges) {
        let mut sizes = self.ckpt.seg_sizes.borrow_mut();
        let segs: Vec<u64> = sizes.keys().copied().collect();
        for seg in segs {
            let Some(ranges) = refs.get_mut(&seg) else {
                self.store.remove(seg);
                sizes.remove(&seg);
                continue;
            };
            let referenced: u64 = ranges.iter().map(|(a, b)| b - a).sum();
            let Some(entry) = sizes.get_mut(&seg) else {
                continue;
            };
            if referenced >= entry.1 {
                continue;
            }
            entry.1 = referenced;
            ranges.sort_unstable();
            let path = self.store.dir().join(segment::seg_name(seg));
            let file = match std::fs::OpenOptions::new().write(true).open(&path) {
                Ok(f) => f,
                Err(e) => {
                    log::warn!("punch {}: {e}", path.display());
                    continue;
                }
            };
            let mut pos = 0;
            let mut gaps = Vec::new();
            for &(a, b) in ranges.iter() {
                if a > pos {
                    gaps.push((pos, a));
                }
                pos = pos.max(b);
            }
            gaps.push((pos, entry.0.div_ceil(ALIGN) * ALIGN));
            for (a, b) in gaps {
                let (start, end) = (a.div_ceil(ALIGN) * ALIGN, b / ALIGN * ALIGN);
                if end > start {
                    punch_hole(&file, start, end - start);
                }
            }
        }
    }
}

/// Hands free heap pages back to the OS. Records moved to segments free many small blocks
/// interleaved with long-lived ones (topics), which glibc's allocator otherwise keeps; with a
/// million small topics that is most of the RSS.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists (under its locks) and
    // advises the kernel about pages no allocation uses; it takes no pointers from us.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Deallocates `len` bytes at `offset` of `file` (the file keeps its size; reads there
/// return zeros).
fn punch_hole(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::unix::io::AsRawFd;
    // SAFETY: fallocate takes a file descriptor and three integers; the descriptor is valid
    // for the whole call because `file` is borrowed for it, and no memory is shared with the
    // kernel.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if r != 0 {
        log::warn!(
            "punching a hole in a segment: {}",
            std::io::Error::last_os_error()
        );
    }
}
