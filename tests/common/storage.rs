//! Storage-lifecycle helpers (segments, snapshots, checkpoints) for the black-box tests: what
//! the server leaves in its data dir, waiting for a checkpoint to land, a small deterministic
//! PRNG, and a paged reader that checks every diff page it gets.
//!
//! Layout the server is held to (issue 4): `<data-dir>/shard-<i>/seg-*.dat` segment files and
//! `<data-dir>/shard-<i>/snap-<20-digit lsn>.bin` snapshots, the latter written atomically
//! (temp file + rename), so a complete snapshot name is the sign of a finished checkpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::sse::{name_on_shard, shard_of};
use super::{files_under, raw_records, Server};

/// How long `wait_for_checkpoint*` waits for a new snapshot.
pub const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(10);

/// `snap-` + exactly 20 decimal digits + `.bin` (not a temp file on its way to that name).
pub fn is_snapshot_name(name: &str) -> bool {
    name.strip_prefix("snap-")
        .and_then(|r| r.strip_suffix(".bin"))
        .is_some_and(|d| d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()))
}

/// `seg-*.dat`.
pub fn is_segment_name(name: &str) -> bool {
    name.starts_with("seg-") && name.ends_with(".dat")
}

/// The files of `shard-<i>` directories whose name passes `pred`, as
/// `(shard index, file name, size in bytes)`.
fn shard_files(s: &Server, pred: fn(&str) -> bool) -> Vec<(usize, String, u64)> {
    let mut out = Vec::new();
    for i in 0..s.shards {
        let dir = s.data_dir().join(format!("shard-{i}"));
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if pred(&name) {
                // A file can vanish between listing and stat (a checkpoint removing it).
                if let Ok(m) = e.metadata() {
                    out.push((i, name, m.len()));
                }
            }
        }
    }
    out.sort();
    out
}

/// Complete snapshot files across all shard dirs, as "shard-<i>/snap-<lsn>.bin".
pub fn snapshot_files(s: &Server) -> BTreeSet<String> {
    shard_files(s, is_snapshot_name)
        .into_iter()
        .map(|(i, n, _)| format!("shard-{i}/{n}"))
        .collect()
}

/// Segment files across all shard dirs, as ("shard-<i>/seg-*.dat", size).
pub fn segment_files(s: &Server) -> Vec<(String, u64)> {
    shard_files(s, is_segment_name)
        .into_iter()
        .map(|(i, n, len)| (format!("shard-{i}/{n}"), len))
        .collect()
}

/// Total size of all segment files.
pub fn segment_bytes(s: &Server) -> u64 {
    segment_files(s).iter().map(|(_, l)| l).sum()
}

/// Disk space the segment files occupy (allocated blocks, as `du` counts them): compaction
/// may rewrite segments or punch holes into them; either frees this.
pub fn segment_allocated_bytes(s: &Server) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for i in 0..s.shards {
        let dir = s.data_dir().join(format!("shard-{i}"));
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            if is_segment_name(&e.file_name().to_string_lossy()) {
                if let Ok(m) = e.metadata() {
                    total += m.blocks() * 512;
                }
            }
        }
    }
    total
}

/// The shards that own `topics`.
pub fn shards_of<T: AsRef<str>>(s: &Server, topics: &[T]) -> Vec<usize> {
    let set: BTreeSet<usize> = topics
        .iter()
        .map(|t| shard_of(t.as_ref(), s.shards))
        .collect();
    set.into_iter().collect()
}

/// Name of the probe topic `wait_for_checkpoint*` writes to on shard `shard`.
pub fn probe_topic(s: &Server, shard: usize) -> String {
    name_on_shard("zz-checkpoint-probe-", shard, s.shards)
}

/// Appends one tiny record to the probe topic of each shard in `shards` (created on first
/// use with `cap_records: 1`, so it never holds more than one record).
pub fn poke_shards(s: &Server, shards: &[usize]) {
    static POKES: AtomicU64 = AtomicU64::new(0);
    for &i in shards {
        let t = probe_topic(s, i);
        let (st, v) = s.put(&format!("/v0/topics/{t}"), &json!({"cap_records": 1}));
        assert!(st == 200 || st == 201, "PUT probe topic {t}: {st} {v}");
        let n = POKES.fetch_add(1, Ordering::Relaxed);
        s.append(&t, json!([{ "data": n }]));
    }
}

/// Waits (up to `timeout`) until every shard in `shards` has finished a checkpoint that
/// includes everything written to it before the call.
///
/// How, from outside: list the snapshot files, then write one record to a probe topic on each
/// shard (`poke_shards`), then wait until each shard has a snapshot file that was not listed.
/// The probe write guarantees the shard has a change to checkpoint (so this never waits in
/// vain on an idle shard, nor misses a checkpoint that finished just before the call). The
/// new snapshot finished after the listing, but it may have started before the probe: the
/// tests rely on "checkpoints ran over this data", not on where each record ended up.
/// `Err` describes what is missing, with the data dir listing.
pub fn try_wait_for_checkpoint_on(
    s: &Server,
    shards: &[usize],
    timeout: Duration,
) -> Result<(), String> {
    let before = snapshot_files(s);
    poke_shards(s, shards);
    let start = Instant::now();
    loop {
        let now = snapshot_files(s);
        let missing: Vec<usize> = shards
            .iter()
            .copied()
            .filter(|i| {
                let prefix = format!("shard-{i}/");
                !now.iter()
                    .any(|n| n.starts_with(&prefix) && !before.contains(n))
            })
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "no checkpoint: shard(s) {missing:?} wrote no new snapshot file \
                 (shard-<i>/snap-<20-digit lsn>.bin) within {timeout:?} of a write to them.\n\
                 snapshots before: {before:?}\nsnapshots now: {now:?}\n\
                 data dir: {:#?}",
                listing(s)
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every file under the data dir with its size, for failure messages.
pub fn listing(s: &Server) -> Vec<String> {
    files_under(s.data_dir())
        .iter()
        .map(|p| {
            let len = fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            format!(
                "{} ({len} B)",
                p.strip_prefix(s.data_dir()).unwrap_or(p).display()
            )
        })
        .collect()
}

/// `try_wait_for_checkpoint_on` with `CHECKPOINT_TIMEOUT`; panics with the reason and the
/// data dir listing if a shard does not checkpoint.
pub fn wait_for_checkpoint_on(s: &Server, shards: &[usize]) {
    if let Err(e) = try_wait_for_checkpoint_on(s, shards, CHECKPOINT_TIMEOUT) {
        panic!("{e}");
    }
}

/// `wait_for_checkpoint_on` every shard of the server.
pub fn wait_for_checkpoint(s: &Server) {
    let all: Vec<usize> = (0..s.shards).collect();
    wait_for_checkpoint_on(s, &all);
}

/// `wait_for_checkpoint_on` the shards owning `topics`.
pub fn wait_for_checkpoint_of<T: AsRef<str>>(s: &Server, topics: &[T]) {
    wait_for_checkpoint_on(s, &shards_of(s, topics));
}

/// Asserts the data dir holds at least one segment file (records were moved out of memory).
pub fn assert_has_segments(s: &Server, ctx: &str) {
    let segs = segment_files(s);
    assert!(
        !segs.is_empty(),
        "{ctx}: no segment file (shard-<i>/seg-*.dat) in the data dir after a checkpoint with a \
         tiny --hot-tail-bytes; files: {:#?}",
        listing(s)
    );
}

/// A small deterministic PRNG (xorshift64*), so failures reproduce from the printed seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A seed from `TOPICS_TEST_SEED` or else the clock, printed so a failing run can be
    /// repeated (`TOPICS_TEST_SEED=<seed> cargo test ...`).
    pub fn from_time(ctx: &str) -> Rng {
        let seed = std::env::var("TOPICS_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{ctx}: rng seed {seed}");
        Rng::new(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `num/den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next_u64() % den < num
    }
}

/// Reads `topic` with diff pages of `limit: 1000` from `from_seq` until caught up, with
/// `extra` fields merged into each request (e.g. `{"node": "a"}`). Checks each page: status
/// 200, at most 1000 records, seqs ascending and above the cursor, `next_from_seq` at or past
/// the last record, `caught_up == (next_from_seq == head_seq)`, `lag`. Returns the records
/// (field -> raw JSON text) and the first page (for its tombstone).
pub fn read_pages(
    s: &Server,
    topic: &str,
    from_seq: u64,
    extra: &Value,
) -> (Vec<BTreeMap<String, String>>, Value) {
    let mut c = s.client();
    let mut from = from_seq;
    let mut out: Vec<BTreeMap<String, String>> = Vec::new();
    let mut first: Option<Value> = None;
    for _ in 0..100_000 {
        let mut body = json!({"from_seq": from, "limit": 1000});
        if let Some(m) = extra.as_object() {
            for (k, v) in m {
                body[k] = v.clone();
            }
        }
        let r = c.post_raw(
            &format!("/v0/topics/{topic}/diff"),
            &serde_json::to_vec(&body).unwrap(),
        );
        assert_eq!(r.status, 200, "diff {topic} {body}: {}", r.text());
        let v = r.json();
        let recs = raw_records(&r.body);
        assert!(
            recs.len() <= 1000,
            "diff {topic} {body}: {} records with limit 1000",
            recs.len()
        );
        let mut last = from;
        for rec in &recs {
            let seq: u64 = rec["$seq"]
                .parse()
                .unwrap_or_else(|_| panic!("diff {topic}: bad $seq in {rec:?}"));
            assert!(
                seq > last,
                "diff {topic} {body}: seq {seq} after {last} (not ascending / not above the cursor)"
            );
            last = seq;
        }
        let next = v["next_from_seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("next_from_seq in {v}"));
        let head = v["head_seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("head_seq in {v}"));
        assert!(
            next >= last,
            "diff {topic} {body}: next_from_seq {next} below the last record {last} (the page \
             returned records past the seqs it says it examined; the next page would repeat them)"
        );
        assert_eq!(
            v["caught_up"],
            json!(next == head),
            "diff {topic} {body}: caught_up must be next_from_seq == head_seq: {v}"
        );
        assert_eq!(
            v["lag"],
            json!(head - next),
            "diff {topic} {body}: lag: {v}"
        );
        out.extend(recs);
        if first.is_none() {
            first = Some(v.clone());
        }
        if next == head {
            return (out, first.unwrap());
        }
        assert!(
            next > from,
            "diff {topic} {body}: cursor did not advance from {from}: {v}"
        );
        from = next;
    }
    panic!("read_pages {topic}: never caught up");
}
