//! Disk full (SPEC §1 `507 insufficient_storage`): writes that cannot be made durable are
//! refused with nothing of them visible, reads keep working, writes succeed again once space
//! returns (no restart), and everything acknowledged survives a restart.
//!
//! As root, the server's data dir is a size-limited tmpfs mounted by the test, filled with a
//! ballast file (`fallocate`) to leave a little room; removing the ballast gives the space
//! back. Without root (or if mounting fails) the test falls back to the storage engine's
//! hidden fault switch: while the file named by `TOPICS_FAULT_NO_SPACE_FILE` exists, making a
//! WAL file fails with ENOSPC. `DISK_FULL_TEST_INJECT=1` forces the fallback.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Unmounts the tmpfs on drop (lazily, so a still-running server cannot block it).
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

enum Filler {
    /// A tmpfs with a ballast file taking (almost) all its free space.
    Tmpfs { ballast: PathBuf },
    /// The injected fault: the flag file exists while the disk is "full".
    Injected { flag: PathBuf },
}

impl Filler {
    fn fill(&self) {
        match self {
            Filler::Tmpfs { ballast } => {
                let dir = ballast.parent().unwrap();
                let avail = avail_bytes(dir);
                // Leave 1 MiB: less than a WAL file, more than the small files need.
                let len = avail.saturating_sub(1 << 20);
                let ok = Command::new("fallocate")
                    .arg("-l")
                    .arg(len.to_string())
                    .arg(ballast)
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "fallocate ballast of {len} bytes");
                eprintln!(
                    "disk_full: ballast {len} bytes; {} bytes left",
                    avail_bytes(dir)
                );
            }
            Filler::Injected { flag } => std::fs::write(flag, b"full").unwrap(),
        }
    }

    fn free(&self) {
        match self {
            Filler::Tmpfs { ballast } => std::fs::remove_file(ballast).unwrap(),
            Filler::Injected { flag } => std::fs::remove_file(flag).unwrap(),
        }
    }
}

fn avail_bytes(dir: &Path) -> u64 {
    let out = Command::new("df")
        .arg("-B1")
        .arg("--output=avail")
        .arg(dir)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df output")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

const PAD: usize = 60_000;

fn batch(from: u64, n: u64) -> Value {
    let pad = "x".repeat(PAD);
    Value::Array(
        (from..from + n)
            .map(|i| json!({ "data": { "i": i, "pad": pad } }))
            .collect(),
    )
}

fn post(s: &Server, topic: &str, records: Value) -> (u16, Value) {
    s.json_post(
        &format!("/v0/topics/{topic}"),
        &json!({ "records": records }),
    )
}

/// Checks that `topic` holds exactly records `0..n` (by `data.i`), with seqs 1..=n.
fn check_records(s: &Server, topic: &str, n: u64) {
    let recs = s.diff_all(topic);
    assert_eq!(recs.len() as u64, n, "{topic}: record count");
    for (k, r) in recs.iter().enumerate() {
        assert_eq!(r["data"]["i"], json!(k), "{topic}: record {k}");
        assert_eq!(r["$seq"], json!(k + 1), "{topic}: seq of record {k}");
    }
}

#[test]
fn disk_full_is_507_and_recovers() {
    let mut s = Server::start_with(1, &[]);
    // Restart on a small filesystem mounted over the data dir.
    s.stop_graceful();
    let dir = s.data_dir().to_path_buf();
    let mut _mount = None;
    // DISK_FULL_TEST_INJECT=1 forces the fallback (to exercise it as root).
    let inject = std::env::var_os("DISK_FULL_TEST_INJECT").is_some();
    let filler = if !inject
        && is_root()
        && Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=200M", "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|st| st.success())
    {
        _mount = Some(Mount(dir.clone()));
        eprintln!("disk_full: data dir on a 200 MiB tmpfs");
        Filler::Tmpfs {
            ballast: dir.join("ballast"),
        }
    } else {
        let flag = dir.parent().unwrap().join("no-space");
        eprintln!(
            "disk_full: cannot mount a tmpfs (not root?); injecting ENOSPC through \
             TOPICS_FAULT_NO_SPACE_FILE={}",
            flag.display()
        );
        // Inherited by the server; this file holds one test, so nothing else reads it.
        std::env::set_var("TOPICS_FAULT_NO_SPACE_FILE", &flag);
        Filler::Injected { flag }
    };
    s.spawn_again();

    let (st, v) = s.put("/v0/topics/f", &json!({ "durability": "fsync" }));
    assert_eq!(st, 201, "{v}");
    let (st, v) = s.put("/v0/topics/d", &json!({ "durability": "disk" }));
    assert_eq!(st, 201, "{v}");
    s.append("d", batch(0, 1));
    let mut d_acked = 1u64;

    filler.fill();

    // Append until refused. The WAL file in use is preallocated, so the refusal comes when
    // the next one is needed and cannot be made (within about one WAL file of appends).
    let mut acked = 0u64;
    let refusal = loop {
        let (st, v) = post(&s, "f", batch(acked, 16));
        match st {
            200 | 201 => {
                assert_eq!(v["last_seq"], json!(acked + 16), "{v}");
                acked += 16;
            }
            507 => break v,
            _ => panic!("append: {st} {v}\n{}", s.log_tail()),
        }
        assert!(acked < 400 * 16, "never refused\n{}", s.log_tail());
    };
    eprintln!("disk_full: refused after {acked} records");
    assert_error_shape(&refusal);
    assert_eq!(
        refusal["error"]["code"], "insufficient_storage",
        "{refusal}"
    );
    assert!(refusal["error"]["message"].is_string(), "{refusal}");

    // A smaller write may still fit; fill what is left with single records.
    loop {
        let (st, v) = post(&s, "f", batch(acked, 1));
        match st {
            200 => acked += 1,
            507 => break,
            _ => panic!("append: {st} {v}\n{}", s.log_tail()),
        }
        assert!(acked < 401 * 16, "never refused\n{}", s.log_tail());
    }
    // Refused again, on both classes, and a new topic is not created by a refused write.
    let (st, v) = post(&s, "f", batch(acked, 1));
    assert_error(&(st, v), 507, "insufficient_storage");
    let (st, v) = post(&s, "d", batch(d_acked, 1));
    assert_error(&(st, v), 507, "insufficient_storage");
    let (st, v) = post(&s, "new-topic", batch(0, 1));
    assert_error(&(st, v), 507, "insufficient_storage");
    let (st, _) = s.get("/v0/topics/new-topic");
    assert_eq!(st, 404, "a refused write created its topic");

    // Reads keep working and show nothing of the refused writes.
    let t = s.topic("f");
    assert_eq!(t["head_seq"], json!(acked), "{t}");
    let d = s.diff("f", json!({ "from_seq": acked.saturating_sub(2) }));
    assert_eq!(d["head_seq"], json!(acked), "{d}");
    assert_eq!(d["records"].as_array().unwrap().len(), 2, "{d}");
    check_records(&s, "f", acked);
    check_records(&s, "d", d_acked);
    let (st, _) = s.get("/v0/health");
    assert_eq!(st, 200);

    // Space returns: writes succeed again without a restart.
    filler.free();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (st, v) = post(&s, "f", batch(acked, 16));
        match st {
            200 | 201 => {
                assert_eq!(v["first_seq"], json!(acked + 1), "{v}");
                acked += 16;
                break;
            }
            507 => {
                assert!(
                    Instant::now() < deadline,
                    "still 507 after space returned\n{}",
                    s.log_tail()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            _ => panic!("append after space returned: {st} {v}\n{}", s.log_tail()),
        }
    }
    // Well past the WAL rotation that was refused.
    for _ in 0..8 {
        let (st, v) = post(&s, "f", batch(acked, 16));
        assert_eq!(st, 200, "{v}");
        acked += 16;
        let (st, v) = post(&s, "d", batch(d_acked, 1));
        assert_eq!(st, 200, "{v}");
        d_acked += 1;
    }
    check_records(&s, "f", acked);
    check_records(&s, "d", d_acked);

    // Everything acknowledged is there after a restart.
    s.restart_graceful();
    check_records(&s, "f", acked);
    check_records(&s, "d", d_acked);
    let (st, v) = post(&s, "f", batch(acked, 1));
    assert_eq!(st, 200, "{v}");
    s.stop_graceful();
    // `_mount` (declared after `s`) is dropped first: the server is stopped by then.
}
