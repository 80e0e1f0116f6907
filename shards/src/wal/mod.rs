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
//!
//! Running out of space (ENOSPC, EDQUOT, a short write) is not fatal. The next file is made
//! in the background once a quarter of the current one is used; if that fails for lack of
//! space, [`Wal::try_append`] refuses frames that would need it, before anything is applied,
//! and the flusher tries again every [`NO_SPACE_RETRY`]. If a write itself fails for lack of
//! space, its frames (and everything queued after them) stay queued in order and are written
//! again every [`NO_SPACE_RETRY`] until it succeeds; meanwhile [`Wal::no_space`] is set, so the
//! shard refuses new writes, and waiters keep waiting (nothing is dropped or reordered).
//! Other I/O errors stop the log for good ([`Wal::failed`]).

use crate::event::Event;
use glommio::io::{DmaFile, OpenOptions};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod recover;

pub use recover::open;

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

impl WalError {
    /// Whether this is a lack of space (recoverable once space returns) rather than a fault.
    pub fn is_no_space(&self) -> bool {
        is_no_space(&self.0)
    }
}

/// Whether an I/O error message (as formatted by `std::io::Error`, which glommio's errors
/// include) reports a full disk or an exhausted quota, or is a short write.
pub fn is_no_space(msg: &str) -> bool {
    msg.contains("(os error 28)") || msg.contains("(os error 122)") || msg.contains(SHORT_WRITE)
}

/// Marks short writes, which a full disk can also cause.
const SHORT_WRITE: &str = "short write (no space left?)";

/// How often writes refused or stalled for lack of space are tried again.
pub const NO_SPACE_RETRY: Duration = Duration::from_millis(250);

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

async fn open_for_write(dir: &Path, idx: u64, size: u64) -> Result<DmaFile, WalError> {
    let path = dir.join(file_name(idx));
    let existed = path.exists();
    match open_for_write_inner(dir, &path, size).await {
        Ok(f) => Ok(f),
        Err(e) => {
            // A file this call created holds no frames: remove it, so whatever part of it
            // was allocated goes back to the filesystem.
            if !existed {
                let _ = std::fs::remove_file(&path);
            }
            Err(e)
        }
    }
}

async fn open_for_write_inner(dir: &Path, path: &Path, size: u64) -> Result<DmaFile, WalError> {
    if fault::no_space() {
        return Err(WalError(format!(
            "create {}: injected: No space left on device (os error 28)",
            path.display()
        )));
    }
    {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .dma_open(path)
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
        .custom_flags(if sync_mode_dsync() { libc::O_DSYNC } else { 0 })
        .dma_open(path)
        .await
        .map_err(|e| io_err("open wal file", e))
}

/// How a commit reaches stable storage (environment variable `TOPICS_WAL_SYNC`):
/// - `dsync` (default): WAL files are opened O_DSYNC, so each write is durable when it
///   completes: one I/O per commit.
/// - `fdatasync`: plain direct writes, then an fdatasync of the file. About 20% fewer commits
///   per second here, but the completion never waits for a kernel worker on the CPU that
///   takes the disk's interrupts: with that CPU kept busy by another process, an O_DSYNC
///   commit was measured at ~4 ms (a scheduler tick) instead of ~0.3 ms (perf/RESULTS.md).
fn sync_mode_dsync() -> bool {
    static DSYNC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DSYNC.get_or_init(|| match std::env::var("TOPICS_WAL_SYNC").as_deref() {
        Ok("fdatasync") => false,
        Ok("dsync") | Err(_) => true,
        Ok(other) => {
            log::warn!("TOPICS_WAL_SYNC={other:?} is neither dsync nor fdatasync; using dsync");
            true
        }
    })
}

const ZERO_FILL_CHUNK: u64 = 1 << 20;
/// How quickly the flusher wants to run once its I/O completes.
const FLUSHER_LATENCY: Duration = Duration::from_micros(100);

struct Chunk {
    file_idx: u64,
    file_size: u64,
    start: u64,
    bytes: Vec<u8>,
    /// The LSN of the last frame in `bytes`.
    last_lsn: u64,
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
    /// Set while a write cannot be made for lack of space (its frames stay queued).
    no_space: Option<String>,
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
    /// Set while the next file could not be made for lack of space.
    next_failed: RefCell<Option<String>>,
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
                chunk.last_lsn = lsn;
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
        chunk.last_lsn = lsn;
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

    /// Whether a frame of `body_len` bytes can be queued now with a prospect of being written:
    /// `Err` (with the reason) while writes stall for lack of space, or when the frame needs
    /// a new file and the next one could not be made for lack of space.
    pub fn room_for(&self, body_len: usize) -> Result<(), String> {
        let st = self.state.borrow();
        if let Some(e) = &st.no_space {
            return Err(e.clone());
        }
        // Once the next file cannot be made, the last RESERVE_ROOM bytes of this one are
        // kept for the small frames logged without a check (reservations, cursors).
        let reserve = RESERVE_ROOM.min(self.default_file_size as usize / 8);
        if st.file_pos + (HEADER + body_len + reserve) as u64 > st.file_size {
            if let Some(e) = self.next_failed.borrow().as_ref() {
                return Err(e.clone());
            }
        }
        Ok(())
    }

    /// Like [`append`](Self::append), but refuses (queueing nothing) when [`room_for`]
    /// says there is no room.
    ///
    /// [`room_for`]: Self::room_for
    pub fn try_append(&self, kind: u8, body: &[u8], urgent: bool) -> Result<u64, String> {
        self.room_for(body.len())?;
        Ok(self.append(kind, body, urgent))
    }

    /// Why writes are refused for lack of space, if they are: a write stalled, or the next
    /// WAL file could not be made and the current one is nearly full.
    pub fn no_space(&self) -> Option<String> {
        if let Some(e) = &self.state.borrow().no_space {
            return Some(e.clone());
        }
        self.room_for(0).err()
    }

    /// Marks the pending frames as needing a sync now.
    pub fn hurry(&self) {
        self.state.borrow_mut().urgent = true;
        self.work.notify_all();
    }

    pub fn durable_lsn(&self) -> u64 {
        self.durable_lsn.get()
    }

    /// Waits until the frame with this LSN is on stable storage. While writes stall for lack
    /// of space it keeps waiting (the frame stays queued and is written once space returns).
    pub async fn wait_durable(&self, lsn: u64) -> Result<(), WalError> {
        self.wait_durable_while(lsn, || true).await
    }

    /// Like [`wait_durable`](Self::wait_durable), but while writes stall for lack of space
    /// it gives up (with a no-space error) as soon as `keep_waiting` says so; it is asked at
    /// least every [`NO_SPACE_RETRY`].
    pub async fn wait_durable_while(
        &self,
        lsn: u64,
        keep_waiting: impl Fn() -> bool,
    ) -> Result<(), WalError> {
        loop {
            let l = self.durable.listen();
            if self.durable_lsn.get() >= lsn {
                return Ok(());
            }
            {
                let st = self.state.borrow();
                if let Some(e) = &st.failed {
                    return Err(e.clone());
                }
                if let Some(e) = &st.no_space {
                    if !keep_waiting() {
                        return Err(WalError(e.clone()));
                    }
                }
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

/// Room kept in the current file, once the next cannot be made, for frames logged without a
/// check.
const RESERVE_ROOM: usize = 64 << 10;

fn current_chunk(st: &mut State) -> &mut Chunk {
    let (idx, size, pos) = (st.file_idx, st.file_size, st.file_pos);
    if st.chunks.last().is_none_or(|c| c.file_idx != idx) {
        st.chunks.push(Chunk {
            file_idx: idx,
            file_size: size,
            start: pos,
            bytes: Vec::with_capacity(4096),
            last_lsn: 0,
        });
    }
    // Just pushed or matched above.
    let last = st.chunks.len() - 1;
    &mut st.chunks[last]
}

struct Flusher {
    /// When the next file was last asked for (retries after a lack of space are spaced).
    last_prepare: Option<std::time::Instant>,
    /// Whether the next file is being made now.
    preparing: Rc<Cell<bool>>,
    file_idx: u64,
    file: Rc<DmaFile>,
    /// Aligned file offset where `block` starts.
    block_start: u64,
    /// Bytes already written in the partial block at the end of the log.
    block: Vec<u8>,
    /// The next WAL file, being created and zero-filled in the background.
    next: Option<(u64, glommio::task::JoinHandle<Result<DmaFile, WalError>>)>,
    /// Writes to `file` not yet made durable by an fdatasync.
    unsynced: bool,
}

impl Flusher {
    /// Starts creating the file after the current one, so rotation finds it ready. A lack of
    /// space is reported through `wal.next_failed` (and cleared by a later success).
    fn prepare_next(&mut self, wal: &Rc<Wal>) {
        self.last_prepare = Some(std::time::Instant::now());
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
        let w = wal.clone();
        let preparing = self.preparing.clone();
        preparing.set(true);
        let task = glommio::spawn_local(async move {
            let r = open_for_write(&dir, idx, size).await;
            preparing.set(false);
            let mut failed = w.next_failed.borrow_mut();
            match &r {
                Ok(_) => {
                    if failed.take().is_some() {
                        log::info!("wal: {} made; space is back", file_name(idx));
                    }
                }
                Err(e) if e.is_no_space() => {
                    if failed.is_none() {
                        log::warn!(
                            "wal: cannot make the next log file ({e}); writes that need it \
                             are refused until space returns"
                        );
                    }
                    *failed = Some(e.0.clone());
                }
                // Other errors come up again when the file is needed.
                Err(_) => {}
            }
            r
        });
        self.next = Some((idx, task.detach()));
    }

    /// Makes the writes so far durable (without O_DSYNC files: an fdatasync).
    async fn sync(&mut self, wal: &Rc<Wal>) -> Result<(), WalError> {
        if sync_mode_dsync() || !self.unsynced {
            return Ok(());
        }
        let t0 = std::time::Instant::now();
        self.file
            .fdatasync()
            .await
            .map_err(|e| io_err("sync wal", e))?;
        wal.stats
            .sync_latency
            .borrow_mut()
            .get_or_insert_with(crate::metrics::latency_histogram)
            .saturating_record(t0.elapsed().as_micros() as u64);
        self.unsynced = false;
        Ok(())
    }

    /// After the next file could not be made for lack of space: try again (spaced by
    /// [`NO_SPACE_RETRY`]) unless an attempt is under way.
    async fn retry_next(&mut self, wal: &Rc<Wal>) {
        if wal.next_failed.borrow().is_none()
            || self.preparing.get()
            || self
                .last_prepare
                .is_some_and(|t| t.elapsed() < NO_SPACE_RETRY)
        {
            return;
        }
        // The last attempt has finished; collect it.
        if let Some((_, task)) = self.next.take() {
            if let Some(Ok(_)) = task.await {
                // Made after all (space came back meanwhile): keep it.
                return;
            }
        }
        self.prepare_next(wal);
    }

    /// Writes one chunk. On failure nothing of the flusher's position changes, so the same
    /// chunk can be written again.
    async fn write_chunk(&mut self, wal: &Rc<Wal>, chunk: &Chunk) -> Result<(), WalError> {
        if chunk.file_idx != self.file_idx {
            // What went into the file being left must be durable before the next one.
            self.sync(wal).await?;
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
        let new_block = buf.as_bytes()[keep..used].to_vec();
        let at = self.block_start;
        let t0 = std::time::Instant::now();
        let written = self
            .file
            .write_at(buf, at)
            .await
            .map_err(|e| io_err("write wal", e))?;
        self.unsynced = true;
        if sync_mode_dsync() {
            wal.stats
                .sync_latency
                .borrow_mut()
                .get_or_insert_with(crate::metrics::latency_histogram)
                .saturating_record(t0.elapsed().as_micros() as u64);
        }
        if written < size {
            return Err(WalError(format!(
                "wal write of {size} bytes at {at} wrote {written}: {SHORT_WRITE}"
            )));
        }
        self.block = new_block;
        self.block_start = new_block_start;
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
            f.retry_next(&wal).await;
            let l = wal.work.listen();
            if !wal.state.borrow().chunks.is_empty() {
                break;
            }
            if wal.next_failed.borrow().is_some() {
                futures_lite::future::or(l, glommio::timer::sleep(NO_SPACE_RETRY)).await;
            } else {
                l.await;
            }
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
        let chunks = {
            let mut st = wal.state.borrow_mut();
            st.urgent = false;
            std::mem::take(&mut st.chunks)
        };
        // Either each completed write is durable (O_DSYNC files), in order, or the writes
        // become durable together with the fdatasync after them.
        let mut result = Ok(());
        let mut done = None;
        let mut left = Vec::new();
        let mut chunks = chunks.into_iter();
        while let Some(chunk) = chunks.next() {
            match f.write_chunk(&wal, &chunk).await {
                Ok(()) => done = Some(chunk.last_lsn),
                Err(e) => {
                    result = Err(e);
                    left.push(chunk);
                    left.extend(chunks);
                    break;
                }
            }
        }
        if done.is_some() {
            if let Err(e) = f.sync(&wal).await {
                // Written but not known durable: nothing of it may be acknowledged.
                done = None;
                result = Err(e);
            }
        }
        if let Some(lsn) = done {
            wal.durable_lsn.set(lsn);
        }
        match result {
            Ok(()) => {
                wal.stats.flushes.set(wal.stats.flushes.get() + 1);
                if wal.state.borrow_mut().no_space.take().is_some() {
                    log::info!("wal: writes succeed again; space is back");
                }
                wal.durable.notify_all();
            }
            Err(e) if e.is_no_space() => {
                // Keep every unwritten frame queued, in order, ahead of those appended
                // meanwhile, and try again shortly. Waiters keep waiting; new writes are
                // refused while `no_space` is set.
                {
                    let mut st = wal.state.borrow_mut();
                    if st.no_space.is_none() {
                        log::warn!(
                            "{e}; {} queued WAL bytes are kept and written again every \
                             {NO_SPACE_RETRY:?}; writes are refused until space returns",
                            left.iter().map(|c| c.bytes.len()).sum::<usize>()
                        );
                    }
                    st.no_space = Some(e.0);
                    left.append(&mut st.chunks);
                    st.chunks = left;
                    st.urgent = true;
                }
                wal.durable.notify_all();
                glommio::timer::sleep(NO_SPACE_RETRY).await;
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

pub mod fault;

#[cfg(test)]
mod tests;
