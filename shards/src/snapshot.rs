//! Checkpoints of one core's state: recovery loads the newest complete snapshot and replays
//! only the WAL after it.
//!
//! A snapshot file `snap-<lsn>.bin` holds every topic (config, head, floors, counters,
//! idempotency keys, router marks, its sparse index of segment blocks and delete set), every
//! router and every watch session, as of the WAL frame `state_lsn`. The records that were
//! not yet in a segment when the checkpoint began come back from the WAL frames after
//! `fill_lsn` (frames in `fill_lsn+1..=state_lsn` only give back their records; frames
//! after `state_lsn` replay in full).
//!
//! ```text
//! magic u32 | version u32 | fill_lsn u64 | state_lsn u64 | next_seg u64 | body_len u64 |
//! body | crc32c u32 (of everything before it)
//! body: entries of  kind u8 | len u32 | bytes
//! ```
//!
//! It is written to a temporary file, synced, then renamed into place, so a crash leaves
//! either the previous snapshot or the new one, never a torn one.

use crate::codec::Enc;
use std::path::{Path, PathBuf};

const MAGIC: u32 = 0x5453_4e50;
const VERSION: u32 = 1;
const HEADER: usize = 40;

pub const E_TOPIC: u8 = 1;
pub const E_ROUTER: u8 = 2;
pub const E_SESSION: u8 = 3;

pub fn snap_name(lsn: u64) -> String {
    format!("snap-{lsn:020}.bin")
}

fn parse_snap_name(name: &str) -> Option<u64> {
    name.strip_prefix("snap-")?
        .strip_suffix(".bin")?
        .parse()
        .ok()
}

/// A snapshot being encoded.
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new(fill_lsn: u64, state_lsn: u64, next_seg: u64) -> Writer {
        let mut buf = Vec::with_capacity(1 << 20);
        Enc(&mut buf)
            .u32(MAGIC)
            .u32(VERSION)
            .u64(fill_lsn)
            .u64(state_lsn)
            .u64(next_seg)
            .u64(0);
        Writer { buf }
    }

    /// Adds one entry, encoded by `f`.
    pub fn entry(&mut self, kind: u8, f: impl FnOnce(&mut Vec<u8>)) {
        self.buf.push(kind);
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        f(&mut self.buf);
        let len = (self.buf.len() - at - 4) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }

    pub fn finish(mut self) -> Vec<u8> {
        let body = (self.buf.len() - HEADER) as u64;
        self.buf[32..40].copy_from_slice(&body.to_le_bytes());
        let crc = crc32c::crc32c(&self.buf);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        self.buf
    }
}

/// A snapshot read back and verified.
pub struct Loaded {
    pub fill_lsn: u64,
    pub state_lsn: u64,
    pub next_seg: u64,
    pub path: PathBuf,
    data: Vec<u8>,
}

impl Loaded {
    /// The entries: (kind, bytes).
    pub fn entries(&self) -> impl Iterator<Item = (u8, &[u8])> {
        let body = &self.data[HEADER..];
        let mut pos = 0;
        std::iter::from_fn(move || {
            let kind = *body.get(pos)?;
            let len = u32::from_le_bytes(body.get(pos + 1..pos + 5)?.try_into().ok()?) as usize;
            let e = body.get(pos + 5..pos + 5 + len)?;
            pos += 5 + len;
            Some((kind, e))
        })
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

fn verify(path: &Path, data: Vec<u8>) -> Option<Loaded> {
    let le64 = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    if data.len() < HEADER + 4 {
        return None;
    }
    if u32::from_le_bytes(data[0..4].try_into().ok()?) != MAGIC
        || u32::from_le_bytes(data[4..8].try_into().ok()?) != VERSION
    {
        return None;
    }
    let body = le64(&data[32..40]) as usize;
    let end = HEADER.checked_add(body)?;
    let crc = u32::from_le_bytes(data.get(end..end + 4)?.try_into().ok()?);
    if crc32c::crc32c(&data[..end]) != crc {
        return None;
    }
    let mut data = data;
    data.truncate(end);
    Some(Loaded {
        fill_lsn: le64(&data[8..16]),
        state_lsn: le64(&data[16..24]),
        next_seg: le64(&data[24..32]),
        path: path.to_path_buf(),
        data,
    })
}

/// Snapshot files in `dir`, newest first.
fn list(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let lsn = parse_snap_name(&e.file_name().to_string_lossy())?;
                    Some((lsn, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.reverse();
    out
}

/// Loads the newest valid snapshot of `dir`, if any, and removes leftover temporary files.
pub fn load(dir: &Path) -> Option<Loaded> {
    let _ = std::fs::remove_file(dir.join("snap.tmp"));
    for (_, path) in list(dir) {
        match std::fs::read(&path) {
            Ok(data) => match verify(&path, data) {
                Some(l) => return Some(l),
                None => log::error!(
                    "snapshot {} is damaged; trying an older one",
                    path.display()
                ),
            },
            Err(e) => log::error!("snapshot {}: {e}", path.display()),
        }
    }
    None
}

/// Writes a snapshot atomically and removes the older ones.
pub async fn write(dir: &Path, state_lsn: u64, bytes: &[u8]) -> Result<PathBuf, String> {
    let tmp = dir.join("snap.tmp");
    crate::segment::write_file(&tmp, bytes).await?;
    let path = dir.join(snap_name(state_lsn));
    std::fs::rename(&tmp, &path).map_err(|e| format!("rename {}: {e}", tmp.display()))?;
    crate::segment::sync_dir(dir);
    for (lsn, old) in list(dir) {
        if lsn != state_lsn {
            let _ = std::fs::remove_file(old);
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_damage_is_refused() {
        let mut w = Writer::new(5, 9, 3);
        w.entry(E_TOPIC, |b| b.extend_from_slice(b"abc"));
        w.entry(E_ROUTER, |_| {});
        let bytes = w.finish();
        let p = Path::new("x");
        let l = verify(p, bytes.clone()).expect("valid");
        assert_eq!((l.fill_lsn, l.state_lsn, l.next_seg), (5, 9, 3));
        let got: Vec<(u8, Vec<u8>)> = l.entries().map(|(k, b)| (k, b.to_vec())).collect();
        assert_eq!(got, vec![(E_TOPIC, b"abc".to_vec()), (E_ROUTER, vec![])]);
        // Padding after the end (DMA writes round up) is ignored.
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0; 100]);
        assert!(verify(p, padded).is_some());
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(verify(p, bad).is_none(), "byte {i}");
        }
    }
}
