//! Node loop-prevention across servers (SPEC §8): two servers mirrored both ways by
//! `scripts/mirror.sh` (diff with `node`, writes with `node`), with the mirror killed and
//! restarted midway. Every record arrives on the other side exactly once; none echoes back.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

struct Mirror {
    child: Child,
}

impl Mirror {
    fn start(a: &Server, b: &Server, state: &Path, log: &Path) -> Mirror {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mirror.sh");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new("bash")
            .arg(script)
            .args(["--a", &format!("http://127.0.0.1:{}", a.port)])
            .args(["--b", &format!("http://127.0.0.1:{}", b.port)])
            .args(["--node-a", "node-a", "--node-b", "node-b"])
            .arg("--state")
            .arg(state)
            .args(["--topics", "m1,m2", "--interval-ms", "50", "--limit", "7"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start scripts/mirror.sh");
        Mirror { child }
    }

    /// kill -9 of the mirror's whole process group (bash, and any curl/jq in flight).
    fn kill9(&mut self) {
        let pgid = self.child.id();
        let _ = Command::new("kill")
            .args(["-9", "--", &format!("-{pgid}")])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Writes batch `b` of `side` ("A"/"B") to `topic`: 3 records, some tagged, one with an
/// application node id, one with meta.
fn write_batch(s: &Server, side: &str, topic: &str, b: u64) {
    let recs = json!([
        {"data": {"side": side, "topic": topic, "i": b * 3}, "tag": format!("{side}-{b}")},
        {"data": {"side": side, "topic": topic, "i": b * 3 + 1}, "node": "app"},
        {"data": {"side": side, "topic": topic, "i": b * 3 + 2}, "meta": {"b": b}}
    ]);
    s.append(topic, recs);
}

/// (side, i) -> how many times it is present in `topic`, and the records.
fn census(s: &Server, topic: &str) -> (BTreeMap<(String, u64), usize>, Vec<Value>) {
    let recs = match s.get(&format!("/v0/topics/{topic}")).0 {
        404 => Vec::new(),
        _ => s.diff_all(topic),
    };
    let mut m = BTreeMap::new();
    for r in &recs {
        let side = r["data"]["side"].as_str().expect("side").to_string();
        let i = r["data"]["i"].as_u64().expect("i");
        *m.entry((side, i)).or_insert(0) += 1;
    }
    (m, recs)
}

#[test]
fn mirror_both_ways_without_echo_across_a_kill() {
    let a = Server::start(1);
    let b = Server::start(2);
    let dir =
        std::env::temp_dir().join(format!("topics-mirror-{}-{}", std::process::id(), now_ms()));
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let log = dir.join("mirror.log");
    let mut m = Mirror::start(&a, &b, &state, &log);

    const BATCHES: u64 = 24;
    let mut kills = 0;
    for k in 0..BATCHES {
        for t in ["m1", "m2"] {
            write_batch(&a, "A", t, k);
            write_batch(&b, "B", t, k);
        }
        std::thread::sleep(Duration::from_millis(60));
        // Kill the mirror (mid-copy, most likely) a few times and start it again.
        if k % 8 == 5 {
            m.kill9();
            kills += 1;
            std::thread::sleep(Duration::from_millis(100));
            m = Mirror::start(&a, &b, &state, &log);
        }
    }
    assert_eq!(kills, 3);

    // Each topic on each side ends with 3 * BATCHES records from each side, each once.
    let per_side = (3 * BATCHES) as usize;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let done = [&a, &b].iter().all(|s| {
            ["m1", "m2"]
                .iter()
                .all(|t| census(s, t).1.len() >= 2 * per_side)
        });
        if done {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let tail = &log[log.len().saturating_sub(3000)..];
            panic!(
                "mirror did not converge in 40 s: A m1 {} m2 {}, B m1 {} m2 {} (want {})\n{tail}",
                census(&a, "m1").1.len(),
                census(&a, "m2").1.len(),
                census(&b, "m1").1.len(),
                census(&b, "m2").1.len(),
                2 * per_side
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let it run a little longer: nothing more may arrive (no echo).
    std::thread::sleep(Duration::from_millis(800));
    drop(m);
    for (s, here, there) in [(&a, "A", "B"), (&b, "B", "A")] {
        for t in ["m1", "m2"] {
            let (counts, recs) = census(s, t);
            assert_eq!(
                recs.len(),
                2 * per_side,
                "side {here} topic {t}: {} records, want {} (echo or duplicate)",
                recs.len(),
                2 * per_side
            );
            for side in [here, there] {
                for i in 0..per_side as u64 {
                    let n = counts.get(&(side.to_string(), i)).copied().unwrap_or(0);
                    assert_eq!(
                        n, 1,
                        "side {here} topic {t}: record {side}/{i} present {n} times"
                    );
                }
            }
            // Copies carry the origin's node id; originals keep theirs; order per origin.
            let mut last = None;
            for r in &recs {
                let d = &r["data"];
                assert_eq!(d["topic"], json!(t), "{r}");
                if d["side"] == json!(there) {
                    let node = format!("node-{}", there.to_ascii_lowercase());
                    assert_eq!(r["$node"], json!(node), "copy on {here}: {r}");
                    let i = d["i"].as_u64().unwrap();
                    assert!(
                        last.is_none_or(|l| i > l),
                        "copies out of order on {here}: {r}"
                    );
                    last = Some(i);
                    match i % 3 {
                        0 => assert_eq!(r["$tag"], json!(format!("{there}-{}", i / 3)), "{r}"),
                        2 => assert_eq!(r["meta"], json!({"b": i / 3}), "{r}"),
                        _ => {}
                    }
                } else if d["i"].as_u64().unwrap() % 3 == 1 {
                    assert_eq!(r["$node"], json!("app"), "{r}");
                } else {
                    assert!(r.get("$node").is_none(), "{r}");
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
