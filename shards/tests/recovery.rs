//! Recovery of a shard from its WAL: restart, torn tails, stale bytes past the tail, rotation.
//! Each "run" of the server is its own glommio executor, so nothing survives between runs but
//! the files.

use glommio::{LocalExecutorBuilder, Placement};
use shards::mesh::{AppendCmd, DiffCmd, DiffReply};
use shards::{Command, NewRecord, ReplayProgress, Reply, Shard, ShardOptions};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shards-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn opts(dir: &Path, file_size: u64) -> ShardOptions {
    ShardOptions {
        id: 0,
        dir: dir.to_path_buf(),
        sync_interval: Duration::from_millis(2),
        wal_file_size: file_size,
        auto_create: true,
        hot_tail_bytes: 64 << 20,
        checkpoint_interval: Duration::from_secs(30),
        topic_gauge: Default::default(),
        all_topic_gauges: Vec::new(),
        max_topics: 0,
        max_routers: 0,
        all_bytes_gauges: Vec::new(),
        max_retained_bytes: 0,
        max_queue: 0,
        session_gauge: Default::default(),
    }
}

/// Runs `f` against a freshly opened shard on its own executor.
fn run<T: Send + 'static>(
    dir: &Path,
    file_size: u64,
    f: impl AsyncFnOnce(std::rc::Rc<Shard>) -> T + Send + 'static,
) -> T {
    let o = opts(dir, file_size);
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let shard = Shard::open(o, &ReplayProgress::default())
                .await
                .expect("open");
            f(shard).await
        })
        .expect("executor")
        .join()
        .expect("join")
}

fn record(data: &str) -> NewRecord {
    NewRecord {
        node: None,
        tag: None,
        data: Arc::from(data.as_bytes()),
        meta: None,
        hops: 0,
    }
}

async fn append(shard: &Rc<Shard>, topic: &str, data: &[&str]) -> (u64, u64) {
    let cmd = Command::Append(AppendCmd {
        topic: topic.into(),
        records: data.iter().map(|d| record(d)).collect(),
        idempotency_key: None,
        create: None,
        config: Some(shards::ConfigPatch {
            durable: Some(true),
            ..Default::default()
        }),
        router_mark: None,
        disable_backpressure: false,
        stream: None,
    });
    match shard.execute(cmd).await {
        Reply::Appended(r) => (r.first_seq, r.last_seq),
        other => panic!("append: {other:?}"),
    }
}

async fn read_all(shard: &Rc<Shard>, topic: &str) -> DiffReply {
    let cmd = Command::Diff(DiffCmd {
        topic: topic.into(),
        from_seq: 0,
        limit: 100_000,
        nodes: vec![],
        wait_ms: 0,
        durable_only: false,
    });
    match shard.execute(cmd).await {
        Reply::Diff(d) => d,
        other => panic!("diff: {other:?}"),
    }
}

fn datas(d: &DiffReply) -> Vec<(u64, String)> {
    d.records
        .iter()
        .map(|r| (r.seq, String::from_utf8_lossy(&r.data).into_owned()))
        .collect()
}

fn wal_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".log"))
        .collect();
    v.sort();
    v
}

/// Offset just past the last non-zero byte of a file.
fn used_len(path: &Path) -> usize {
    let data = std::fs::read(path).expect("read");
    data.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1)
}

#[test]
fn restart_keeps_records_and_continues_seqs() {
    let dir = temp_dir("restart");
    run(&dir, 1 << 20, async |s| {
        append(&s, "a", &["1", "{\"x\": [1, 2]}"]).await;
        append(&s, "b", &["true"]).await;
    });
    let got = run(&dir, 1 << 20, async |s| {
        let a = datas(&read_all(&s, "a").await);
        let next = append(&s, "a", &["3"]).await;
        (a, next)
    });
    assert_eq!(
        got.0,
        vec![(1, "1".to_string()), (2, "{\"x\": [1, 2]}".to_string())]
    );
    assert_eq!(got.1, (3, 3));
}

#[test]
fn torn_tail_is_cut_and_stale_bytes_never_come_back() {
    let dir = temp_dir("torn");
    run(&dir, 1 << 20, async |s| {
        for i in 0..20 {
            append(&s, "t", &[&format!("\"r{i}\"")]).await;
        }
    });
    // Tear the log in the middle: garble a byte ~60% in, leaving valid frames after it.
    let file = wal_files(&dir.join(""))[0].clone();
    let mut data = std::fs::read(&file).expect("read");
    let tear = used_len(&file) * 6 / 10;
    data[tear] ^= 0xff;
    std::fs::write(&file, &data).expect("write");
    let (before, new_seq) = run(&dir, 1 << 20, async |s| {
        let before = datas(&read_all(&s, "t").await);
        let new = append(&s, "t", &["\"new\""]).await;
        (before, new)
    });
    assert!(!before.is_empty() && before.len() < 20, "{before:?}");
    for (i, (seq, d)) in before.iter().enumerate() {
        assert_eq!(
            (*seq, d.as_str()),
            (i as u64 + 1, format!("\"r{i}\"").as_str())
        );
    }
    assert_eq!(new_seq.0, before.len() as u64 + 1);
    // After another restart: exactly the surviving prefix plus the new record; none of the
    // stale frames that followed the tear.
    let after = run(&dir, 1 << 20, async |s| datas(&read_all(&s, "t").await));
    let mut want = before.clone();
    want.push((new_seq.0, "\"new\"".into()));
    assert_eq!(after, want);
}

#[test]
fn truncated_file_mid_frame_recovers() {
    let dir = temp_dir("trunc");
    run(&dir, 1 << 20, async |s| {
        for i in 0..10 {
            append(&s, "t", &[&format!("{i}")]).await;
        }
    });
    let file = wal_files(&dir)[0].clone();
    let used = used_len(&file);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .expect("open");
    f.set_len(used as u64 - 3).expect("truncate");
    drop(f);
    let got = run(&dir, 1 << 20, async |s| {
        let got = datas(&read_all(&s, "t").await);
        append(&s, "t", &["99"]).await;
        got
    });
    assert_eq!(got.len(), 9);
    let again = run(&dir, 1 << 20, async |s| datas(&read_all(&s, "t").await));
    assert_eq!(again.len(), 10);
    assert_eq!(again[9], (10, "99".to_string()));
}

#[test]
fn rotation_across_files_and_oversized_frames() {
    let dir = temp_dir("rotate");
    let big = format!("\"{}\"", "x".repeat(100_000));
    let big2 = big.clone();
    run(&dir, 64 << 10, async move |s| {
        for i in 0..30 {
            append(&s, "r", &[&format!("{i}"), &big2]).await;
        }
    });
    assert!(wal_files(&dir).len() > 10, "{:?}", wal_files(&dir));
    let got = run(&dir, 64 << 10, async |s| {
        let d = read_all(&s, "r").await;
        append(&s, "r", &["\"tail\""]).await;
        datas(&d)
    });
    assert_eq!(got.len(), 60);
    assert_eq!(got[58], (59, "29".to_string()));
    assert_eq!(got[59].1, big);
    let again = run(&dir, 64 << 10, async |s| datas(&read_all(&s, "r").await));
    assert_eq!(again.len(), 61);
}
