//! The write-ahead log of one core.
//!
//! Files `wal-<index>.log` live in the shard's directory, each preallocated (extending a file
//! on the commit path costs ~30x more than writing into allocated space) and written through
//! glommio's `DmaFile` (O_DIRECT over io_uring). Frames are packed back to back:
//!
//! ```text
//! len u32 | crc32c u32 | epoch u32 | lsn u64 | kind u8 | body
//! ```
//!
//! `len` covers the whole frame, the CRC covers everything after itself. LSNs grow by one per
//! frame; the epoch grows by one per server start. Recovery accepts a frame only if its CRC
//! matches, its LSN is the next one and its epoch never goes backwards, so a torn tail or the
//! stale bytes of an earlier run past it are never mistaken for data. A `Rotate` frame (or a
//! remainder too small for a header) moves on to the next file.
//!
//! Group commit: appends go into an in-memory pending buffer and return their LSN at once.
//! One flusher task per core has at most one synchronous (O_DSYNC) write in flight; everything that
//! arrives meanwhile rides the next one. Frames that need an acknowledged sync (`fsync`
//! topics) mark the buffer urgent; otherwise the flusher waits up to the sync interval to
//! gather more.

use crate::event::Event;
use glommio::io::{DmaFile, OpenOptions};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub const HEADER: usize = 21;
const ALIGN: u64 = 4096;
/// Default size of a WAL file; a frame larger than the size in use gets a file of its own size.
pub const FILE_SIZE: u64 = 64 << 20;

pub const KIND_EPOCH: u8 = 1;
pub const KIND_ROTATE: u8 = 2;

#[derive(Debug, Clone)]
pub struct WalError(pub String);

impl std::fmt::Display for WalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "write-ahead log failure: {}", self.0)
    }
}

fn io_err(what: &str, e: impl std::fmt::Display) -> WalError {
    WalError(format!("{what}: {e}"))
}

pub fn file_name(idx: u64) -> String {
    format!("wal-{idx:010}.log")
}

fn align_up(v: u64) -> u64 {
    v.div_ceil(ALIGN) * ALIGN
}

/// Encodes one frame onto `out`.
pub fn encode_frame(out: &mut Vec<u8>, epoch: u32, lsn: u64, kind: u8, body: &[u8]) {
    let len = (HEADER + body.len()) as u32;
    let start = out.len();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// One decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameHead {
    pub len: usize,
    pub epoch: u32,
    pub lsn: u64,
    pub kind: u8,
}

/// Checks the frame at the start of `buf`; `None` if it is absent, torn or corrupt.
pub fn decode_frame(buf: &[u8]) -> Option<(FrameHead, &[u8])> {
    let le32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    if buf.len() < HEADER {
        return None;
    }
    let len = le32(&buf[0..4]) as usize;
    if len < HEADER || len > buf.len() {
        return None;
    }
    let crc = le32(&buf[4..8]);
    if crc32c::crc32c(&buf[8..len]) != crc {
        return None;
    }
    let epoch = le32(&buf[8..12]);
    let mut lsn = [0u8; 8];
    lsn.copy_from_slice(&buf[12..20]);
    let head = FrameHead {
        len,
        epoch,
        lsn: u64::from_le_bytes(lsn),
        kind: buf[20],
    };
    Some((head, &buf[HEADER..len]))
}

/// Progress counters of recovery, shared with the readiness endpoint.
#[derive(Default)]
pub struct ReplayProgress {
    pub total_bytes: AtomicU64,
    pub done_bytes: AtomicU64,
}

/// Where a replay ended: the next frame goes here.
struct Tail {
    file_idx: u64,
    pos: u64,
    file_size: u64,
    next_lsn: u64,
    epoch: u32,
    /// The bytes of the partial block at the tail (`align_down(pos)..pos`).
    block: Vec<u8>,
}

/// Replays every valid frame in `dir` in order through `apply(kind, lsn, body)`, deletes the
/// files past the torn tail, and opens the log for writing. Returns the log and the LSN of
/// the first frame replayed (if any).
pub async fn open(
    dir: &Path,
    file_size: u64,
    sync_interval: Duration,
    progress: &ReplayProgress,
    mut apply: impl FnMut(u8, u64, &[u8]),
) -> Result<(Rc<Wal>, Option<u64>), WalError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err("create wal dir", e))?;
    let mut files: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err("list wal dir", e))? {
        let entry = entry.map_err(|e| io_err("list wal dir", e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(idx) = name
            .strip_prefix("wal-")
            .and_then(|s| s.strip_suffix(".log"))
            .and_then(|s| s.parse::<u64>().ok())
        {
            files.push((idx, entry.path()));
        }
    }
    files.sort();
    let mut total = 0;
    for (_, p) in &files {
        total += std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    }
    progress.total_bytes.fetch_add(total, Ordering::Relaxed);

    let mut tail: Option<Tail> = None;
    let mut expected_lsn: Option<u64> = None;
    let mut first_lsn: Option<u64> = None;
    let mut file_lsns = BTreeMap::new();
    let mut epoch = 0u32;
    let mut ended = false;
    for (i, (idx, path)) in files.iter().enumerate() {
        if ended {
            log::warn!("wal: removing {} past the end of the log", path.display());
            std::fs::remove_file(path).map_err(|e| io_err("remove stale wal file", e))?;
            continue;
        }
        if i > 0 && files[i - 1].0 + 1 != *idx {
            log::warn!("wal: gap before {}; the log ends there", path.display());
            ended = true;
            std::fs::remove_file(path).map_err(|e| io_err("remove stale wal file", e))?;
            continue;
        }
        let data = std::fs::read(path).map_err(|e| io_err("read wal file", e))?;
        let mut pos = 0usize;
        let mut rotated = false;
        while pos + HEADER <= data.len() {
            let Some((head, body)) = decode_frame(&data[pos..]) else {
                break;
            };
            if expected_lsn.is_some_and(|l| l != head.lsn) || head.epoch < epoch {
                break;
            }
            expected_lsn = Some(head.lsn + 1);
            epoch = head.epoch;
            pos += head.len;
            first_lsn.get_or_insert(head.lsn);
            file_lsns.entry(*idx).or_insert(head.lsn);
            match head.kind {
                KIND_ROTATE => {
                    rotated = true;
                    break;
                }
                KIND_EPOCH => {}
                k => apply(k, head.lsn, body),
            }
        }
        progress
            .done_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let remainder_too_small = pos + HEADER > data.len();
        if rotated || (remainder_too_small && pos > 0 && i + 1 < files.len()) {
            continue;
        }
        // The log ends in this file at `pos`.
        let block_start = (pos as u64 / ALIGN * ALIGN) as usize;
        tail = Some(Tail {
            file_idx: *idx,
            pos: pos as u64,
            file_size: (data.len() as u64).max(file_size),
            next_lsn: expected_lsn.unwrap_or(1),
            epoch: epoch + 1,
            block: data[block_start..pos].to_vec(),
        });
        ended = true;
    }
    let tail = match tail {
        Some(t) => t,
        None => {
            // Empty directory, or every file ended in a rotation: start a new file.
            let idx = files.last().map(|f| f.0 + 1).unwrap_or(0);
            Tail {
                file_idx: idx,
                pos: 0,
                file_size,
                next_lsn: expected_lsn.unwrap_or(1),
                epoch: epoch + 1,
                block: Vec::new(),
            }
        }
    };
    file_lsns.entry(tail.file_idx).or_insert(tail.next_lsn);
    let wal = Rc::new(Wal {
        file_lsns: RefCell::new(file_lsns),
        dir: dir.to_path_buf(),
        default_file_size: file_size,
        sync_interval,
        state: RefCell::new(State {
            epoch: tail.epoch,
            next_lsn: tail.next_lsn,
            chunks: Vec::new(),
            file_idx: tail.file_idx,
            file_pos: tail.pos,
            file_size: tail.file_size,
            urgent: false,
            failed: None,
        }),
        durable_lsn: Cell::new(tail.next_lsn.saturating_sub(1)),
        work: Event::new(),
        durable: Event::new(),
        stats: WalStats::default(),
    });
    let file = open_for_write(dir, tail.file_idx, tail.file_size).await?;
    let flusher = Flusher {
        file_idx: tail.file_idx,
        file: Rc::new(file),
        block_start: tail.pos / ALIGN * ALIGN,
        block: tail.block,
        next: None,
    };
    // The first frame of every run records its epoch, overwriting whatever torn bytes
    // followed the last valid frame.
    wal.append(KIND_EPOCH, &[], true);
    // The flusher runs in its own latency-sensitive task queue: glommio then preempts the
    // request tasks more often to poll for I/O, so a finished write or sync is noticed (and
    // the next one submitted) without waiting for every ready request to run first.
    let tq = glommio::executor().create_task_queue(
        glommio::Shares::Static(1000),
        glommio::Latency::Matters(FLUSHER_LATENCY),
        "wal-flusher",
    );
    glommio::spawn_local_into(run_flusher(wal.clone(), flusher), tq)
        .map_err(|e| io_err("start the wal flusher", e))?
        .detach();
    Ok((wal, first_lsn))
}

async fn open_for_write(dir: &Path, idx: u64, size: u64) -> Result<DmaFile, WalError> {
    let path = dir.join(file_name(idx));
    {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .dma_open(&path)
            .await
            .map_err(|e| io_err("open wal file", e))?;
        let cur = file.file_size().await.map_err(|e| io_err("stat wal", e))?;
        if cur < size {
            file.pre_allocate(size, false)
                .await
                .map_err(|e| io_err("preallocate wal file", e))?;
            // Write the new range once with zeros: a direct write into fallocated but never
            // written space converts extents, which io_uring cannot do inline (the write is
            // punted to a kernel worker) and costs milliseconds under load; an overwrite
            // does not.
            let mut pos = cur / ALIGN * ALIGN;
            while pos < size {
                let len = (size - pos).min(ZERO_FILL_CHUNK) as usize;
                let mut buf = file.alloc_dma_buffer(len);
                buf.as_bytes_mut().fill(0);
                file.write_at(buf, pos)
                    .await
                    .map_err(|e| io_err("zero-fill wal file", e))?;
                pos += len as u64;
            }
            // Make the new size and extents durable now, not on the commit path.
            file.fdatasync()
                .await
                .map_err(|e| io_err("sync wal file", e))?;
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        let _ = file.close().await;
    }
    // Frames are written with O_DSYNC: a write completes once it is on stable storage, so a
    // commit is one I/O instead of a write and an fdatasync (~100 us instead of ~130 us for
    // a 16 KiB overwrite here). The file's size and extents never change after the
    // zero-fill above, so no metadata has to follow.
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .dma_open(&path)
        .await
        .map_err(|e| io_err("open wal file", e))
}

const ZERO_FILL_CHUNK: u64 = 1 << 20;
/// How quickly the flusher wants to run once its I/O completes.
const FLUSHER_LATENCY: Duration = Duration::from_micros(100);

struct Chunk {
    file_idx: u64,
    file_size: u64,
    start: u64,
    bytes: Vec<u8>,
}

struct State {
    epoch: u32,
    next_lsn: u64,
    chunks: Vec<Chunk>,
    file_idx: u64,
    file_pos: u64,
    file_size: u64,
    urgent: bool,
    failed: Option<WalError>,
}

/// Counters for metrics and the `performance` block.
#[derive(Default)]
pub struct WalStats {
    pub frames: Cell<u64>,
    pub flushes: Cell<u64>,
    pub bytes_written: Cell<u64>,
    pub rotations: Cell<u64>,
    pub bytes_appended: Cell<u64>,
    /// Latency of each synchronous write, µs.
    pub sync_latency: RefCell<Option<hdrhistogram::Histogram<u64>>>,
}

pub struct Wal {
    /// The first LSN of each WAL file still present (by file index).
    file_lsns: RefCell<BTreeMap<u64, u64>>,
    dir: PathBuf,
    default_file_size: u64,
    sync_interval: Duration,
    state: RefCell<State>,
    durable_lsn: Cell<u64>,
    work: Event,
    durable: Event,
    pub stats: WalStats,
}

impl Wal {
    /// Queues one frame and returns its LSN. `urgent` asks the flusher to sync now.
    pub fn append(&self, kind: u8, body: &[u8], urgent: bool) -> u64 {
        let mut st = self.state.borrow_mut();
        let len = (HEADER + body.len()) as u64;
        if st.file_pos + len > st.file_size {
            if st.file_size - st.file_pos >= HEADER as u64 {
                let lsn = st.next_lsn;
                st.next_lsn += 1;
                let epoch = st.epoch;
                let chunk = current_chunk(&mut st);
                encode_frame(&mut chunk.bytes, epoch, lsn, KIND_ROTATE, &[]);
            }
            st.file_idx += 1;
            st.file_pos = 0;
            self.file_lsns.borrow_mut().insert(st.file_idx, st.next_lsn);
            st.file_size = self.default_file_size.max(align_up(len));
            self.stats.rotations.set(self.stats.rotations.get() + 1);
        }
        let lsn = st.next_lsn;
        st.next_lsn += 1;
        let epoch = st.epoch;
        let chunk = current_chunk(&mut st);
        encode_frame(&mut chunk.bytes, epoch, lsn, kind, body);
        st.file_pos += len;
        st.urgent |= urgent;
        drop(st);
        self.stats.frames.set(self.stats.frames.get() + 1);
        self.stats
            .bytes_appended
            .set(self.stats.bytes_appended.get() + len);
        self.work.notify_all();
        lsn
    }

    /// Marks the pending frames as needing a sync now.
    pub fn hurry(&self) {
        self.state.borrow_mut().urgent = true;
        self.work.notify_all();
    }

    pub fn durable_lsn(&self) -> u64 {
        self.durable_lsn.get()
    }

    /// Waits until the frame with this LSN is on stable storage.
    pub async fn wait_durable(&self, lsn: u64) -> Result<(), WalError> {
        loop {
            let l = self.durable.listen();
            if self.durable_lsn.get() >= lsn {
                return Ok(());
            }
            if let Some(e) = &self.state.borrow().failed {
                return Err(e.clone());
            }
            l.await;
        }
    }

    pub fn failed(&self) -> Option<WalError> {
        self.state.borrow().failed.clone()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The LSN of the last frame queued.
    pub fn last_lsn(&self) -> u64 {
        self.state.borrow().next_lsn - 1
    }

    /// Retires the WAL files holding only frames with LSNs `<= lsn` (a snapshot covers them):
    /// they become spares that later rotations reuse instead of creating and zero-filling a
    /// new file. Returns how many files were retired.
    pub fn retire_through(&self, lsn: u64) -> usize {
        let current = self.state.borrow().file_idx;
        let mut lsns = self.file_lsns.borrow_mut();
        let retire: Vec<u64> = lsns
            .iter()
            .zip(lsns.iter().skip(1))
            .filter(|((idx, _), (_, next_first))| **idx < current && **next_first <= lsn + 1)
            .map(|((idx, _), _)| *idx)
            .collect();
        for idx in &retire {
            lsns.remove(idx);
            let from = self.dir.join(file_name(*idx));
            let spares = self.spares();
            if spares.len() < MAX_SPARES {
                let to = self.dir.join(format!("spare-{idx:010}.wal"));
                if let Err(e) = std::fs::rename(&from, &to) {
                    log::warn!("wal: retire {}: {e}", from.display());
                }
            } else if let Err(e) = std::fs::remove_file(&from) {
                log::warn!("wal: remove {}: {e}", from.display());
            }
        }
        if !retire.is_empty() {
            crate::segment::sync_dir(&self.dir);
        }
        retire.len()
    }

    /// Retired WAL files ready for reuse.
    fn spares(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("spare-") && n.ends_with(".wal"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Bytes queued and not yet handed to the flusher.
    pub fn pending_bytes(&self) -> u64 {
        self.state
            .borrow()
            .chunks
            .iter()
            .map(|c| c.bytes.len() as u64)
            .sum()
    }

    /// Bytes of WAL frames queued since this shard started (checkpoint trigger).
    pub fn appended_bytes(&self) -> u64 {
        self.stats.bytes_appended.get()
    }
}

/// Most retired WAL files kept for reuse.
const MAX_SPARES: usize = 2;

fn current_chunk(st: &mut State) -> &mut Chunk {
    let (idx, size, pos) = (st.file_idx, st.file_size, st.file_pos);
    if st.chunks.last().is_none_or(|c| c.file_idx != idx) {
        st.chunks.push(Chunk {
            file_idx: idx,
            file_size: size,
            start: pos,
            bytes: Vec::with_capacity(4096),
        });
    }
    // Just pushed or matched above.
    let last = st.chunks.len() - 1;
    &mut st.chunks[last]
}

struct Flusher {
    file_idx: u64,
    file: Rc<DmaFile>,
    /// Aligned file offset where `block` starts.
    block_start: u64,
    /// Bytes already written in the partial block at the end of the log.
    block: Vec<u8>,
    /// The next WAL file, being created and zero-filled in the background.
    next: Option<(u64, glommio::task::JoinHandle<Result<DmaFile, WalError>>)>,
}

impl Flusher {
    /// Starts creating the file after the current one, so rotation finds it ready.
    fn prepare_next(&mut self, wal: &Wal) {
        let idx = self.file_idx + 1;
        let dir = wal.dir.clone();
        let size = wal.default_file_size;
        // Reuse a retired file: its blocks are allocated and written, so no zero-fill is
        // needed, and its stale frames carry older LSNs that recovery never accepts.
        if let Some(spare) = wal.spares().into_iter().next() {
            if let Err(e) = std::fs::rename(&spare, dir.join(file_name(idx))) {
                log::warn!("wal: reuse {}: {e}", spare.display());
            }
        }
        let task = glommio::spawn_local(async move { open_for_write(&dir, idx, size).await });
        self.next = Some((idx, task.detach()));
    }

    async fn write_chunk(&mut self, wal: &Wal, chunk: Chunk) -> Result<(), WalError> {
        if chunk.file_idx != self.file_idx {
            let prepared = match self.next.take() {
                Some((idx, task)) if idx == chunk.file_idx => task.await,
                _ => None,
            };
            let file = match prepared {
                Some(Ok(f)) if chunk.file_size <= wal.default_file_size => f,
                _ => open_for_write(&wal.dir, chunk.file_idx, chunk.file_size).await?,
            };
            self.file = Rc::new(file);
            self.file_idx = chunk.file_idx;
            self.block_start = 0;
            self.block.clear();
        }
        debug_assert_eq!(self.block_start + self.block.len() as u64, chunk.start);
        let used = self.block.len() + chunk.bytes.len();
        let size = align_up(used as u64) as usize;
        let mut buf = self.file.alloc_dma_buffer(size);
        {
            let dst = buf.as_bytes_mut();
            dst[..self.block.len()].copy_from_slice(&self.block);
            dst[self.block.len()..used].copy_from_slice(&chunk.bytes);
            dst[used..].fill(0);
        }
        let end = self.block_start + used as u64;
        let new_block_start = end / ALIGN * ALIGN;
        let keep = (new_block_start - self.block_start) as usize;
        self.block.clear();
        self.block.extend_from_slice(&buf.as_bytes()[keep..used]);
        let at = self.block_start;
        self.block_start = new_block_start;
        let t0 = std::time::Instant::now();
        let written = self
            .file
            .write_at(buf, at)
            .await
            .map_err(|e| io_err("write wal", e))?;
        wal.stats
            .sync_latency
            .borrow_mut()
            .get_or_insert_with(crate::metrics::latency_histogram)
            .saturating_record(t0.elapsed().as_micros() as u64);
        if written < size {
            return Err(WalError(format!("short wal write: {written} of {size}")));
        }
        wal.stats
            .bytes_written
            .set(wal.stats.bytes_written.get() + size as u64);
        // Prepare the next file once a quarter of this one is used: early enough to be ready
        // at rotation, late enough not to compete with a fresh server's first commits.
        if self.next.is_none() && self.block_start >= wal.default_file_size / 4 {
            self.prepare_next(wal);
        }
        Ok(())
    }
}

async fn run_flusher(wal: Rc<Wal>, mut f: Flusher) {
    loop {
        loop {
            let l = wal.work.listen();
            if !wal.state.borrow().chunks.is_empty() {
                break;
            }
            l.await;
        }
        if !wal.state.borrow().urgent && !wal.sync_interval.is_zero() {
            // Gather more frames for up to the sync interval, unless someone needs a sync.
            let deadline = std::time::Instant::now() + wal.sync_interval;
            loop {
                let l = wal.work.listen();
                if wal.state.borrow().urgent {
                    break;
                }
                let now = std::time::Instant::now();
                if now >= deadline {
                    break;
                }
                let timeout = glommio::timer::sleep(deadline - now);
                futures_lite::future::or(l, async {
                    timeout.await;
                })
                .await;
            }
        }
        let (chunks, last_lsn) = {
            let mut st = wal.state.borrow_mut();
            st.urgent = false;
            (std::mem::take(&mut st.chunks), st.next_lsn - 1)
        };
        // Files are opened O_DSYNC: each completed write is durable, in order.
        let mut result = Ok(());
        for chunk in chunks {
            if let Err(e) = f.write_chunk(&wal, chunk).await {
                result = Err(e);
                break;
            }
        }
        match result {
            Ok(()) => {
                wal.stats.flushes.set(wal.stats.flushes.get() + 1);
                wal.durable_lsn.set(last_lsn);
                wal.durable.notify_all();
            }
            Err(e) => {
                log::error!("{e}; the shard stops accepting writes");
                wal.state.borrow_mut().failed = Some(e);
                wal.durable.notify_all();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_and_corruption() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 3, 42, 9, b"hello");
        let (h, body) = decode_frame(&buf).expect("valid frame");
        assert_eq!(
            h,
            FrameHead {
                len: HEADER + 5,
                epoch: 3,
                lsn: 42,
                kind: 9
            }
        );
        assert_eq!(body, b"hello");
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(decode_frame(&bad).is_none_or(|(h2, _)| h2 != h), "byte {i}");
        }
        for cut in 0..buf.len() {
            assert!(decode_frame(&buf[..cut]).is_none());
        }
        assert!(decode_frame(&[0u8; 64]).is_none());
    }
}
