//! Segment files: records moved out of the WAL by a checkpoint.
//!
//! A segment file `seg-<id>.dat` holds blocks back to back; each block is a run of one topic's
//! records in seq order (at most [`MAX_BLOCK_BYTES`] or [`MAX_BLOCK_RECORDS`]):
//!
//! ```text
//! magic u32 | crc32c u32 | len u32 | count u32 | records...
//! record: seq u64 | ts u64 | hops u8 | node opt | tag opt | data bytes | meta opt
//! ```
//!
//! `len` covers the whole block and the CRC everything after itself. A topic keeps one
//! [`BlockRef`] per block (its sparse seq index: first and last seq, where the block sits,
//! how many of its records are still live), so a read seeks straight to the block holding
//! its cursor and costs O(records returned). Files are written once through DMA (O_DIRECT),
//! synced, and never modified; compaction writes live records into a new segment and the old
//! file is removed once a snapshot no longer refers to it.

use crate::codec::{Dec, Enc};
use crate::topic::Record;
use glommio::io::{DmaFile, OpenOptions};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

const MAGIC: u32 = 0x5442_4b31;
const BLOCK_HEADER: usize = 16;
pub const MAX_BLOCK_BYTES: usize = 128 << 10;
pub const MAX_BLOCK_RECORDS: usize = 1024;
const ALIGN: u64 = 4096;
const WRITE_CHUNK: usize = 1 << 20;

pub fn seg_name(id: u64) -> String {
    format!("seg-{id:010}.dat")
}

pub fn parse_seg_name(name: &str) -> Option<u64> {
    name.strip_prefix("seg-")?
        .strip_suffix(".dat")?
        .parse()
        .ok()
}

/// What recovery and checkpoints need to know of one record without its payload.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Entry {
    pub seq: u64,
    pub ts: u64,
    pub size: u64,
}

/// One block of one topic: the entry of the topic's sparse index.
#[derive(Clone, Debug)]
pub struct BlockRef {
    pub first_seq: u64,
    pub last_seq: u64,
    pub seg: u64,
    pub offset: u64,
    pub len: u32,
    pub count: u32,
    /// Records of the block not deleted or evicted.
    pub live: u32,
    pub live_bytes: u64,
    pub first_ts: u64,
    pub last_ts: u64,
    /// The block's entries, loaded on demand (partial evictions and deletes) and dropped when
    /// the block is no longer at the front of its topic.
    pub entries: Option<Rc<[Entry]>>,
}

impl BlockRef {
    pub fn encode(&self, e: &mut Enc<'_>) {
        e.u64(self.first_seq)
            .u64(self.last_seq)
            .u64(self.seg)
            .u64(self.offset)
            .u32(self.len)
            .u32(self.count)
            .u32(self.live)
            .u64(self.live_bytes)
            .u64(self.first_ts)
            .u64(self.last_ts);
    }

    pub fn decode(d: &mut Dec<'_>) -> Option<BlockRef> {
        Some(BlockRef {
            first_seq: d.u64()?,
            last_seq: d.u64()?,
            seg: d.u64()?,
            offset: d.u64()?,
            len: d.u32()?,
            count: d.u32()?,
            live: d.u32()?,
            live_bytes: d.u64()?,
            first_ts: d.u64()?,
            last_ts: d.u64()?,
            entries: None,
        })
    }
}

/// Encodes `records` (one topic's, in seq order, at least one) as one block at the end of
/// `out`, and returns its reference (offset relative to the start of `out`).
pub fn encode_block(out: &mut Vec<u8>, seg: u64, records: &[Record]) -> BlockRef {
    let start = out.len();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&[0; 12]);
    let mut bytes = 0;
    {
        let mut e = Enc(out);
        for r in records {
            bytes += r.size();
            e.u64(r.seq)
                .u64(r.ts)
                .u8(r.hops)
                .opt_bytes(r.node.as_deref().map(str::as_bytes))
                .opt_bytes(r.tag.as_deref().map(str::as_bytes))
                .bytes(&r.data)
                .opt_bytes(r.meta.as_deref());
        }
    }
    let len = out.len() - start;
    out[start + 8..start + 12].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 12..start + 16].copy_from_slice(&(records.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    let first = &records[0];
    let last = &records[records.len() - 1];
    BlockRef {
        first_seq: first.seq,
        last_seq: last.seq,
        seg,
        offset: start as u64,
        len: len as u32,
        count: records.len() as u32,
        live: records.len() as u32,
        live_bytes: bytes,
        first_ts: first.ts,
        last_ts: last.ts,
        entries: None,
    }
}

/// Splits one topic's records into blocks of bounded size.
pub fn chunks(records: &[Record]) -> impl Iterator<Item = &[Record]> {
    let mut rest = records;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut n = 0;
        let mut bytes = 0;
        while n < rest.len() && n < MAX_BLOCK_RECORDS && (n == 0 || bytes < MAX_BLOCK_BYTES) {
            bytes += rest[n].size() as usize + 32;
            n += 1;
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Some(head)
    })
}

/// Decodes a block read from disk; an error if it is not the block `r` describes intact.
pub fn decode_block(buf: &[u8], r: &BlockRef) -> Result<Vec<Record>, String> {
    let bad = |what: &str| format!("segment {} block at {}: {what}", r.seg, r.offset);
    let le32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    if buf.len() < BLOCK_HEADER || buf.len() < r.len as usize {
        return Err(bad("short read"));
    }
    let buf = &buf[..r.len as usize];
    if le32(&buf[0..4]) != MAGIC || le32(&buf[8..12]) != r.len {
        return Err(bad("bad header"));
    }
    if crc32c::crc32c(&buf[8..]) != le32(&buf[4..8]) {
        return Err(bad("checksum mismatch"));
    }
    let count = le32(&buf[12..16]) as usize;
    let mut d = Dec::new(&buf[BLOCK_HEADER..]);
    let mut out = Vec::with_capacity(count.min(MAX_BLOCK_RECORDS));
    for _ in 0..count {
        let rec = (|| {
            Some(Record {
                seq: d.u64()?,
                ts: d.u64()?,
                hops: d.u8()?,
                node: d.opt_str()?.map(Arc::from),
                tag: d.opt_str()?.map(Arc::from),
                data: Arc::from(d.bytes()?),
                meta: d.opt_bytes()?.map(Arc::from),
            })
        })()
        .ok_or_else(|| bad("undecodable record"))?;
        out.push(rec);
    }
    Ok(out)
}

pub fn entries_of(records: &[Record]) -> Rc<[Entry]> {
    records
        .iter()
        .map(|r| Entry {
            seq: r.seq,
            ts: r.ts,
            size: r.size(),
        })
        .collect()
}

/// The segment files of one shard: open handles for reads, and the directory.
pub struct Store {
    dir: PathBuf,
    files: RefCell<BTreeMap<u64, Rc<DmaFile>>>,
    /// Recently read blocks, decoded, most recent last. Segment files never change and their
    /// ids are never reused within a run, so an entry never goes stale. Small sequential reads
    /// (a claim of one job, a watcher catching up, a router) then cost one block read per
    /// block, not one per call.
    cache: RefCell<std::collections::VecDeque<CachedBlock>>,
}

/// A decoded block and where it sits: (segment, offset).
type CachedBlock = ((u64, u64), Rc<Vec<Record>>);

/// Decoded blocks kept by [`Store`] (about 128 KiB each at most).
const BLOCK_CACHE: usize = 32;

impl Store {
    pub fn new(dir: &Path) -> Rc<Store> {
        Rc::new(Store {
            dir: dir.to_path_buf(),
            files: RefCell::new(BTreeMap::new()),
            cache: RefCell::new(std::collections::VecDeque::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads a block synchronously (a positioned read through the page cache). Used on the
    /// rare paths that must decide at once: evictions and deletes ending inside a block.
    pub fn read_block_sync(&self, r: &BlockRef) -> Result<Vec<Record>, String> {
        use std::os::unix::fs::FileExt;
        let path = self.dir.join(seg_name(r.seg));
        let f = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut buf = vec![0u8; r.len as usize];
        f.read_exact_at(&mut buf, r.offset)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        decode_block(&buf, r)
    }

    /// The entries of a block, loading and caching them in the block reference if needed.
    pub fn entries(&self, r: &mut BlockRef) -> Rc<[Entry]> {
        if let Some(e) = &r.entries {
            return e.clone();
        }
        let e = match self.read_block_sync(r) {
            Ok(recs) => entries_of(&recs),
            Err(e) => {
                // A damaged block: its records are unreadable, so count none of them live.
                log::error!("{e}");
                Rc::from(Vec::new())
            }
        };
        r.entries = Some(e.clone());
        e
    }

    async fn file(&self, seg: u64) -> Result<Rc<DmaFile>, String> {
        if let Some(f) = self.files.borrow().get(&seg) {
            return Ok(f.clone());
        }
        let path = self.dir.join(seg_name(seg));
        let f = OpenOptions::new()
            .read(true)
            .dma_open(&path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let f = Rc::new(f);
        self.files.borrow_mut().insert(seg, f.clone());
        Ok(f)
    }

    /// Reads and decodes a block through DMA (or finds it in the block cache).
    pub async fn read_block(&self, r: &BlockRef) -> Result<Rc<Vec<Record>>, String> {
        let key = (r.seg, r.offset);
        {
            let mut cache = self.cache.borrow_mut();
            if let Some(i) = cache.iter().position(|(k, _)| *k == key) {
                if let Some(hit) = cache.remove(i) {
                    let recs = hit.1.clone();
                    cache.push_back(hit);
                    return Ok(recs);
                }
            }
        }
        let f = self.file(r.seg).await?;
        let buf = f
            .read_at(r.offset, r.len as usize)
            .await
            .map_err(|e| format!("segment {}: {e}", r.seg))?;
        let recs = Rc::new(decode_block(&buf, r)?);
        let mut cache = self.cache.borrow_mut();
        if cache.len() >= BLOCK_CACHE {
            cache.pop_front();
        }
        cache.push_back((key, recs.clone()));
        Ok(recs)
    }

    /// Writes a new segment file from `bytes`, synced, and makes it durable in the directory.
    pub async fn write(&self, seg: u64, bytes: &[u8]) -> Result<(), String> {
        write_file(&self.dir.join(seg_name(seg)), bytes).await
    }
}

/// Writes a whole new file through DMA (preallocated, padded to the DMA alignment), syncs it
/// and its directory entry.
/// On failure the file is removed, so that a write that ran out of space gives back what it
/// took.
pub async fn write_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let r = write_file_inner(path, bytes).await;
    if r.is_err() {
        let _ = std::fs::remove_file(path);
    }
    r
}

async fn write_file_inner(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let err = |what: &str, e: glommio::GlommioError<()>| format!("{what} {}: {e}", path.display());
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(path)
        .await
        .map_err(|e| err("create", e))?;
    let size = (bytes.len() as u64).div_ceil(ALIGN) * ALIGN;
    if size > 0 {
        file.pre_allocate(size, false)
            .await
            .map_err(|e| err("preallocate", e))?;
    }
    let mut pos = 0usize;
    while pos < bytes.len() {
        let n = (bytes.len() - pos).min(WRITE_CHUNK);
        let aligned = (n as u64).div_ceil(ALIGN) * ALIGN;
        let mut buf = file.alloc_dma_buffer(aligned as usize);
        let dst = buf.as_bytes_mut();
        dst[..n].copy_from_slice(&bytes[pos..pos + n]);
        dst[n..].fill(0);
        let w = file
            .write_at(buf, pos as u64)
            .await
            .map_err(|e| err("write", e))?;
        if w < aligned as usize {
            return Err(format!(
                "write to {}: short write (no space left?): {w} of {aligned} bytes",
                path.display()
            ));
        }
        pos += n;
    }
    file.fdatasync().await.map_err(|e| err("sync", e))?;
    let _ = file.close().await;
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

impl Store {
    /// Removes a segment file nobody refers to any more (open readers keep their handle).
    pub fn remove(&self, seg: u64) {
        self.files.borrow_mut().remove(&seg);
        self.cache.borrow_mut().retain(|((s, _), _)| *s != seg);
        let path = self.dir.join(seg_name(seg));
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("remove {}: {e}", path.display());
            }
        }
    }

    /// Segment files present in the directory.
    pub fn list(&self) -> Vec<u64> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if let Some(id) = parse_seg_name(&e.file_name().to_string_lossy()) {
                    out.push(id);
                }
            }
        }
        out.sort_unstable();
        out
    }
}

/// Makes glommio learn, on this thread, whether the device of `dir` supports polled I/O.
///
/// glommio probes that with a read at offset 0 of the first file it opens for DMA on a
/// device and caches the answer per thread. If that file is empty (a new WAL file), the read
/// succeeds trivially and polled reads get enabled even where the device refuses them
/// (virtio disks answer EOPNOTSUPP), which breaks every later DMA read. Opening a file with
/// a real block in it first makes the probe meaningful.
pub async fn probe_dma(dir: &Path) {
    let path = dir.join("dma-probe");
    if std::fs::write(&path, vec![0u8; ALIGN as usize]).is_ok() {
        if let Ok(f) = OpenOptions::new().read(true).dma_open(&path).await {
            let _ = f.close().await;
        }
    }
    let _ = std::fs::remove_file(&path);
}

pub fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, data: &str, tag: Option<&str>) -> Record {
        Record {
            seq,
            ts: 100 + seq,
            node: None,
            tag: tag.map(Arc::from),
            data: Arc::from(data.as_bytes()),
            meta: Some(Arc::from(&b"{}"[..])),
            hops: 1,
        }
    }

    #[test]
    fn block_round_trip_and_corruption() {
        let mut out = vec![9u8; 5];
        let recs = vec![rec(3, "\"a\"", Some("t")), rec(7, "12", None)];
        let b = encode_block(&mut out, 4, &recs);
        assert_eq!((b.first_seq, b.last_seq, b.count, b.offset), (3, 7, 2, 5));
        assert_eq!(b.live_bytes, 3 + 2 + 2 + 2);
        let got = decode_block(&out[5..], &b).expect("decodes");
        assert_eq!(got.len(), 2);
        assert_eq!(&*got[0].data, b"\"a\"");
        assert_eq!(got[0].tag.as_deref(), Some("t"));
        assert_eq!((got[1].seq, got[1].ts, got[1].hops), (7, 107, 1));
        for i in 5..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 1;
            assert!(decode_block(&bad[5..], &b).is_err(), "byte {i}");
        }
    }

    #[test]
    fn chunks_bound_block_size() {
        let recs: Vec<Record> = (1..=3000).map(|s| rec(s, "1", None)).collect();
        let sizes: Vec<usize> = chunks(&recs).map(|c| c.len()).collect();
        assert_eq!(sizes, vec![1024, 1024, 952]);
        let big: Vec<Record> = (1..=4)
            .map(|s| rec(s, &"x".repeat(100_000), None))
            .collect();
        let sizes: Vec<usize> = chunks(&big).map(|c| c.len()).collect();
        assert_eq!(sizes, vec![2, 2]);
    }
}
