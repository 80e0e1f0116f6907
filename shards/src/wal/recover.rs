//! Recovery: replay every valid frame in order, cut the log at its torn tail, and open it
//! for writing.

use super::*;

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
            no_space: None,
        }),
        next_failed: RefCell::new(None),
        durable_lsn: Cell::new(tail.next_lsn.saturating_sub(1)),
        work: Event::new(),
        durable: Event::new(),
        stats: WalStats::default(),
    });
    let file = open_for_write(dir, tail.file_idx, tail.file_size).await?;
    let flusher = Flusher {
        last_prepare: None,
        preparing: Rc::new(Cell::new(false)),
        file_idx: tail.file_idx,
        file: Rc::new(file),
        block_start: tail.pos / ALIGN * ALIGN,
        block: tail.block,
        next: None,
        // What the previous run wrote may still sit in the device's cache: the first
        // commit's fdatasync covers it too.
        unsynced: true,
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
